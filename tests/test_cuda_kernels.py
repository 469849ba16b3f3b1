"""The CUDA path of the Qwen3 layer (runtime/architectures/cuda_block.py and cuda_kernels.py).

Which layers it takes and how it fuses weights is checked everywhere; the kernels themselves only run where
MLX has a CUDA device (the lent GPU machine: `python -m pytest tests/test_cuda_kernels.py`), against mlx-lm's
layer on the same weights.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm.models.activations import swiglu as mlx_lm_swiglu

from embedserver.runtime.architectures import cuda_attention, cuda_block, qwen3
from embedserver.runtime.architectures.cuda_attention import (
    GROUPED_ATTENTION_MAX,
    attention_takes,
    grouped_attention,
)
from embedserver.runtime.architectures.cuda_block import fusable
from embedserver.runtime.architectures.cuda_kernels import (
    embed_rows,
    embed_rows_fits,
    qk_norm_rope,
    rope_params,
    rope_table,
    swiglu,
)
from embedserver.runtime.architectures.qwen3 import Qwen3Encoder

# Small, but with the head size the kernel handles (a multiple of 64) and grouped KV heads, as every
# Qwen3-Embedding model has.
CONFIG: dict[str, Any] = {
    "model_type": "qwen3",
    "hidden_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "intermediate_size": 512,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1_000_000,
    "vocab_size": 1000,
}

cuda_only = pytest.mark.skipif(not mx.cuda.is_available(), reason="needs MLX's CUDA backend")


def encoder_pair(dtype: mx.Dtype) -> tuple[Qwen3Encoder, Qwen3Encoder]:
    """Two encoders with the same random weights (norm weights too, so they are not all ones)."""
    mx.random.seed(0)
    first = Qwen3Encoder(CONFIG)
    weights = [
        (
            name,
            mx.random.normal(value.shape) * 0.05
            if value.ndim == 2
            else 1 + 0.2 * mx.random.normal(value.shape),
        )
        for name, value in tree_flatten(first.parameters())
    ]
    first.load_weights(weights)
    second = Qwen3Encoder(CONFIG)
    second.load_weights(weights)
    for encoder in (first, second):
        encoder.set_dtype(dtype)
        mx.eval(encoder.parameters())
    return first, second


def test_plain_layers_are_fusable_and_others_are_not() -> None:
    assert all(fusable(layer) for layer in Qwen3Encoder(CONFIG).model.layers)
    # A head size the kernel's lane layout cannot split (Qwen3 test models of 16).
    assert not fusable(Qwen3Encoder({**CONFIG, "head_dim": 16}).model.layers[0])
    quantized = Qwen3Encoder(CONFIG)
    nn.quantize(quantized, group_size=64, bits=4)
    assert not fusable(quantized.model.layers[0])
    scaled = Qwen3Encoder({**CONFIG, "rope_scaling": {"type": "linear", "factor": 2.0}})
    assert not fusable(scaled.model.layers[0])
    # The block calls RMSNorm's kernel itself with the norm's weight: another kind of norm is not its to run.
    other_norm = Qwen3Encoder(CONFIG)
    other_norm.model.layers[0].post_attention_layernorm = nn.LayerNorm(CONFIG["hidden_size"])
    assert not fusable(other_norm.model.layers[0])


def test_fusing_keeps_every_weight_and_stores_it_once() -> None:
    fused, plain = encoder_pair(mx.float32)
    assert fused.use_cuda_kernels()
    before = dict(tree_flatten(plain.parameters()))
    for name, value in tree_flatten(fused.parameters()):
        assert np.array_equal(np.array(value), np.array(before[name])), name
    block = fused._cuda_blocks[0]
    attn = fused.model.layers[0].self_attn
    q_rows = CONFIG["num_attention_heads"] * CONFIG["head_dim"]
    kv_rows = CONFIG["num_key_value_heads"] * CONFIG["head_dim"]
    # [in, out], the projections' rows side by side
    assert block.w_qkv.shape == (CONFIG["hidden_size"], q_rows + 2 * kv_rows)
    assert np.array_equal(np.array(block.w_qkv[:, q_rows : q_rows + kv_rows]), np.array(attn.k_proj.weight.T))
    assert block.w_gate_up.shape == (CONFIG["hidden_size"], 2 * CONFIG["intermediate_size"])
    assert np.array_equal(np.array(block.w_o), np.array(attn.o_proj.weight.T))
    assert fused._cuda_embed  # the embedding lookup by the row-copy kernel


def test_grouped_attention_takes_short_sequences_and_small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """`grouped_attention` up to 64 tokens whatever the batch, up to 128 in batches of up to 2,048 padded
    tokens; cuDNN's attention otherwise, and for float32 models."""
    fused, _ = encoder_pair(mx.float32)
    assert fused.use_cuda_kernels()
    uses = fused._cuda_blocks[0]._uses_grouped_attention
    monkeypatch.setattr(cuda_block, "attention_takes", lambda dtype, head_dim: dtype == mx.bfloat16)
    assert uses(1, 1, mx.bfloat16) and uses(256, 16, mx.bfloat16) and uses(512, 64, mx.bfloat16)
    assert uses(16, 128, mx.bfloat16) and uses(20, 100, mx.bfloat16)
    assert not uses(17, 128, mx.bfloat16) and not uses(256, 65, mx.bfloat16)
    assert not uses(1, GROUPED_ATTENTION_MAX + 16, mx.bfloat16)
    assert not uses(1, 16, mx.float32)


def test_embed_rows_takes_tables_of_whole_16_byte_rows() -> None:
    assert embed_rows_fits(mx.zeros((10, 1024), dtype=mx.bfloat16))
    assert embed_rows_fits(mx.zeros((10, 4), dtype=mx.float32))
    assert not embed_rows_fits(mx.zeros((10, 6), dtype=mx.bfloat16))
    assert not embed_rows_fits(mx.zeros((10,), dtype=mx.bfloat16))


def test_bert_has_no_cuda_path() -> None:
    from embedserver.runtime.architectures.bert import BertEncoder

    config = {
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "vocab_size": 100,
        "max_position_embeddings": 64,
    }
    assert BertEncoder(config).use_cuda_kernels() is False


@cuda_only
@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16])
# A warp takes 2 heads at once in bf16 (4 in float32) for up to four rounds: 16 + 8 heads (Qwen3's 0.6B model)
# fill three warps exactly; 4 + 2 and 5 + 2 leave part of a warp idle.
@pytest.mark.parametrize("heads,kv_heads", [(16, 8), (4, 2), (5, 2)])
def test_qk_norm_rope_matches_mlx_operations(dtype: mx.Dtype, heads: int, kv_heads: int) -> None:
    head_dim, batch, length = 128, 3, 37
    mx.random.seed(1)
    qkv = (mx.random.normal((batch, length, (heads + 2 * kv_heads) * head_dim)) * 3).astype(dtype)
    q_weight = (1 + 0.2 * mx.random.normal((head_dim,))).astype(dtype)
    k_weight = (1 + 0.2 * mx.random.normal((head_dim,))).astype(dtype)
    params = rope_params(1e-6, 1e6)
    table = rope_table(length, head_dim, params)
    q, k, v = qk_norm_rope(
        qkv, q_weight, k_weight, table, params, heads=heads, kv_heads=kv_heads, head_dim=head_dim
    )

    rope = nn.RoPE(head_dim, traditional=False, base=1e6)

    def reference(part: mx.array, n: int, weight: mx.array | None) -> mx.array:
        part = part.reshape(batch, length, n, head_dim)
        if weight is None:
            return part.transpose(0, 2, 1, 3)
        rotated: mx.array = rope(mx.fast.rms_norm(part, weight, 1e-6).transpose(0, 2, 1, 3))
        return rotated

    q_ref = reference(qkv[..., : heads * head_dim], heads, q_weight)
    k_ref = reference(qkv[..., heads * head_dim : (heads + kv_heads) * head_dim], kv_heads, k_weight)
    v_ref = reference(qkv[..., (heads + kv_heads) * head_dim :], kv_heads, None)
    tol = 1e-4 if dtype == mx.float32 else 2e-2
    for got, want in ((q, q_ref), (k, k_ref)):
        assert got.shape == want.shape
        assert mx.allclose(got.astype(mx.float32), want.astype(mx.float32), atol=tol, rtol=tol).item()
    assert mx.array_equal(v, v_ref).item()


def attention_in_float64(
    qkv: np.ndarray,
    q_weight: np.ndarray,
    k_weight: np.ndarray,
    heads: int,
    kv_heads: int,
    eps: float,
    base: float,
) -> np.ndarray:
    """Qwen3's attention from the fused projection qkv [B, L, (heads + 2 kv_heads) * D]: q and k RMS-normalized
    with their weights and rotated by RoPE, causal softmax attention; float64 throughout. [B, L, heads * D]."""
    batch, length, width = qkv.shape
    head_dim = width // (heads + 2 * kv_heads)
    x = qkv.astype(np.float64).reshape(batch, length, -1, head_dim)
    half = head_dim // 2
    angles = np.arange(length)[:, None] * base ** (-np.arange(half) / half)[None, :]
    cos, sin = np.cos(angles)[None, :, None, :], np.sin(angles)[None, :, None, :]

    def norm_rope(t: np.ndarray, weight: np.ndarray) -> np.ndarray:
        t = t / np.sqrt((t * t).mean(-1, keepdims=True) + eps) * weight.astype(np.float64)
        lo, hi = t[..., :half], t[..., half:]
        return np.concatenate([lo * cos - hi * sin, hi * cos + lo * sin], axis=-1)

    group = heads // kv_heads
    q = norm_rope(x[:, :, :heads], q_weight)
    k = np.repeat(norm_rope(x[:, :, heads : heads + kv_heads], k_weight), group, axis=2)
    v = np.repeat(x[:, :, heads + kv_heads :], group, axis=2)
    scores = np.einsum("bihd,bjhd->bhij", q, k) * head_dim**-0.5
    scores[:, :, np.triu_indices(length, 1)[0], np.triu_indices(length, 1)[1]] = -np.inf
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    out: np.ndarray = np.einsum("bhij,bjhd->bihd", weights, v).reshape(batch, length, -1)
    return out


# Lengths within one tile of 16 query positions, at and between tiles, and odd and even counts of tiles (a
# work unit is a tile from each end, the middle one of an odd count alone). With 4 query heads a KV head
# (8 + 2 heads) 128 tokens make 16 work units for 8 warps, two each.
ATTENTION_LENGTHS = (1, 5, 16, 17, 32, 33, 48, 50, 64, 100, GROUPED_ATTENTION_MAX)


@cuda_only
@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16])
# Qwen3's 0.6B heads (16 + 8 of 128), its 4B and 8B grouping (4 query heads a KV head), and 64-wide heads.
@pytest.mark.parametrize("heads,kv_heads,head_dim", [(16, 8, 128), (8, 2, 128), (4, 2, 64)])
@pytest.mark.parametrize("length", ATTENTION_LENGTHS)
def test_grouped_attention_matches_attention_in_float64(
    dtype: mx.Dtype, heads: int, kv_heads: int, head_dim: int, length: int
) -> None:
    batch, eps, base = 3, 1e-6, 1e6
    mx.random.seed(3)
    qkv = (mx.random.normal((batch, length, (heads + 2 * kv_heads) * head_dim)) * 2).astype(dtype)
    q_weight, k_weight = ((1 + 0.2 * mx.random.normal((head_dim,))).astype(dtype) for _ in range(2))
    params = rope_params(eps, base)
    table = rope_table(length + 7, head_dim, params)  # rows past the sequence, as the model's table has
    assert attention_takes(dtype, head_dim)
    attend = partial(
        grouped_attention,
        q_weight=q_weight,
        k_weight=k_weight,
        table=table,
        params=params,
        scale=mx.array([head_dim**-0.5], dtype=mx.float32),
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
    )
    # The fused projection's rows as the layer's flat stream holds them, [B * L, ...].
    got = attend(qkv.reshape(batch * length, -1), length=length)
    assert got.shape == (batch * length, heads * head_dim) and got.dtype == dtype
    qkv_host, q_host, k_host = (np.array(x.astype(mx.float32)) for x in (qkv, q_weight, k_weight))
    want = attention_in_float64(qkv_host, q_host, k_host, heads, kv_heads, eps, base)
    # q and k are rounded to the dtype three times (normalized, weighted, rotated), the attention weights once
    # before they multiply v (as in cuDNN's), the output once: up to ~4 units of the dtype's last place
    # relative to 1 + |want| (0.029 for bfloat16, 0.0032 for float16 over these cases, on the H200 and in a
    # CPU emulation of those roundings alike).
    tol = 6 * mx.finfo(dtype).eps
    np.testing.assert_allclose(np.array(got.astype(mx.float32)).reshape(want.shape), want, atol=tol, rtol=tol)


def test_grouped_attention_refuses_longer_sequences_and_float32() -> None:
    shape = {"heads": 4, "kv_heads": 2, "head_dim": 64}
    weight, table, params, scale = (
        mx.ones((64,)),
        mx.zeros((200, 64)),
        rope_params(1e-6, 1e6),
        mx.array([0.125]),
    )
    longest = GROUPED_ATTENTION_MAX + 1
    qkv = mx.zeros((longest, 8 * 64), dtype=mx.bfloat16)
    with pytest.raises(ValueError, match=f"grouped_attention takes up to {GROUPED_ATTENTION_MAX} tokens"):
        grouped_attention(qkv, weight, weight, table, params, scale, **shape, length=longest)
    with pytest.raises(ValueError, match="bfloat16 or float16"):
        grouped_attention(mx.zeros((4, 8 * 64)), weight, weight, table, params, scale, **shape, length=4)
    # Flat rows given `length` must be whole sequences of it.
    rows = mx.zeros((10, 8 * 64), dtype=mx.bfloat16)
    with pytest.raises(ValueError, match=r"takes qkv \[B \* 4, \.\.\.\], got \(10, 512\)"):
        grouped_attention(rows, weight, weight, table, params, scale, **shape, length=4)
    with pytest.raises(ValueError, match=r"takes qkv \[B \* 4"):
        grouped_attention(rows.reshape(2, 5, -1), weight, weight, table, params, scale, **shape, length=4)
    assert not attention_takes(mx.float32, 64)


@pytest.mark.parametrize(
    "info,takes",
    [
        ({"compute_capability_major": 9, "compute_capability_minor": 0, "architecture": "sm_90"}, True),
        ({"compute_capability_major": 8, "compute_capability_minor": 0, "architecture": "sm_80"}, True),
        ({"compute_capability_major": 7, "compute_capability_minor": 5, "architecture": "sm_75"}, False),
        ({"architecture": "x86_64", "device_name": "a CPU"}, False),  # no CUDA device: MLX's CPU answer
    ],
)
def test_attention_kernels_need_tensor_cores_of_compute_capability_8(
    monkeypatch: pytest.MonkeyPatch, info: dict[str, Any], takes: bool
) -> None:
    monkeypatch.setattr(mx, "device_info", lambda: info)
    cuda_attention._compute_capability.cache_clear()
    try:
        assert attention_takes(mx.bfloat16, 128) is takes
        assert attention_takes(mx.float16, 64) is takes
        assert not attention_takes(mx.float32, 128)
        assert not attention_takes(mx.bfloat16, 80)  # heads not a multiple of 32
    finally:
        cuda_attention._compute_capability.cache_clear()


@cuda_only
@pytest.mark.parametrize("head_dim", [64, 128])
def test_rope_table_holds_cos_then_sin_of_each_angle(head_dim: int) -> None:
    length, base = 300, 1e6
    table = np.array(rope_table(length, head_dim, rope_params(1e-6, base)))
    half = head_dim // 2
    angles = np.arange(length)[:, None] * base ** (-np.arange(half) / half)[None, :]
    assert table.shape == (length, head_dim) and table.dtype == np.float32
    np.testing.assert_allclose(table[:, :half], np.cos(angles), atol=1e-4)
    np.testing.assert_allclose(table[:, half:], np.sin(angles), atol=1e-4)


@cuda_only
@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16])
@pytest.mark.parametrize("width", [96, 50])  # 8 (bf16) or 4 (float32) outputs per thread; 2 per thread
def test_swiglu_matches_mlx_lm(dtype: mx.Dtype, width: int) -> None:
    gate_up = (mx.random.normal((67, 2 * width)) * 4).astype(dtype)
    want = mlx_lm_swiglu(gate_up[:, :width], gate_up[:, width:])
    tol = 1e-5 if dtype == mx.float32 else 2e-2
    assert mx.allclose(swiglu(gate_up).astype(mx.float32), want.astype(mx.float32), atol=tol, rtol=tol).item()


@cuda_only
@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16])
@pytest.mark.parametrize("width", [256, 8])
def test_embed_rows_equals_the_embedding_lookup(dtype: mx.Dtype, width: int) -> None:
    weight = mx.random.normal((1000, width)).astype(dtype)
    ids = mx.array(np.random.default_rng(2).integers(0, 1000, size=(3, 37)), dtype=mx.int32)
    got = embed_rows(weight, ids)
    assert got.shape == (3, 37, width) and got.dtype == dtype
    assert mx.array_equal(got, weight[ids]).item()


def last_tokens(hidden: mx.array, lengths: list[int]) -> np.ndarray:
    rows = hidden[mx.arange(len(lengths)), mx.array(lengths) - 1].astype(mx.float32)
    return np.array(rows)


def assert_matches(got: np.ndarray, want: np.ndarray, dtype: mx.Dtype) -> None:
    cosine = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cosine.min() > (0.99999 if dtype == mx.float32 else 0.999), cosine
    if dtype == mx.float32:
        # Float32 matrix products on CUDA round their inputs to TF32 (a 10-bit mantissa) in both encoders, with
        # algorithms that vary with the products' shapes (fused here, separate in mlx-lm): ~1e-3 apart.
        np.testing.assert_allclose(got, want, atol=5e-3, rtol=5e-3)


@cuda_only
@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16])
# Padded to 128, 47, 16 and 30 (grouped_attention's for bfloat16, cuDNN's for float32), and to 140 (cuDNN's
# for both).
@pytest.mark.parametrize("lengths", [[1, 5, 64, 100, 128], [3, 40, 47], [1, 5, 9, 16], [3, 17, 30], [5, 140]])
def test_encoder_matches_mlx_lm_layers(
    dtype: mx.Dtype, lengths: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    fused, plain = encoder_pair(dtype)
    assert fused.use_cuda_kernels()
    # One RoPE table for the model's whole context, made at load.
    assert fused._rope_table.shape == (32768, CONFIG["head_dim"])
    rng = np.random.default_rng(0)
    ids = np.zeros((len(lengths), max(lengths)), dtype=np.int32)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(1, CONFIG["vocab_size"], size=n)
    lens = mx.array(lengths)
    want = last_tokens(plain(mx.array(ids), lens), lengths)
    assert_matches(last_tokens(fused(mx.array(ids), lens), lengths), want, dtype)
    # Last-token pooling's own path: the last layer's output projection and MLP, and the final norm, at the
    # picked rows only.
    pooled = np.array(fused.last_token_states(mx.array(ids), lens).astype(mx.float32))
    assert pooled.shape == (len(lengths), CONFIG["hidden_size"])
    assert_matches(pooled, want, dtype)
    # The first layer queued before the second is built: the same kernels on the same inputs, in the same order.
    monkeypatch.setattr(qwen3, "QUEUED_FIRST", 1)
    monkeypatch.setattr(qwen3, "QUEUE_EARLY_TOKENS", 1)
    early = np.array(fused.last_token_states(mx.array(ids), lens, queue_early=True).astype(mx.float32))
    np.testing.assert_allclose(early, pooled, atol=1e-6, rtol=1e-6)


@cuda_only
def test_batched_rows_equal_each_text_alone() -> None:
    """A row's vector does not depend on the rows beside it, beyond what MLX's own layers show: float32 matrix
    products on CUDA use TF32, whose algorithm (and rounding) varies with the batch shape."""
    fused, plain = encoder_pair(mx.float32)
    assert fused.use_cuda_kernels()
    rng = np.random.default_rng(1)
    lengths = [3, 17, 40]
    texts = [rng.integers(1, CONFIG["vocab_size"], size=n).tolist() for n in lengths]
    ids = np.zeros((3, 48), dtype=np.int32)
    for row, text in enumerate(texts):
        ids[row, : len(text)] = text

    def gap(pooled: Callable[[mx.array, list[int]], np.ndarray]) -> float:
        batched = pooled(mx.array(ids), lengths)
        alone = np.stack([pooled(mx.array([t]), [len(t)])[0] for t in texts])
        return float(np.abs(batched - alone).max())

    def whole_pass(encoder: Qwen3Encoder) -> Callable[[mx.array, list[int]], np.ndarray]:
        return lambda ids, lens: last_tokens(encoder(ids, mx.array(lens)), lens)

    def served(ids: mx.array, lens: list[int]) -> np.ndarray:
        """The served path, whose last layer's products have one row a text."""
        return np.array(fused.last_token_states(ids, mx.array(lens)).astype(mx.float32))

    bound = 2 * gap(whole_pass(plain)) + 1e-5
    assert gap(whole_pass(fused)) <= bound
    assert gap(served) <= bound
