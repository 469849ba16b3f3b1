"""The CPU block's functions against MLX's own: same values to float32 rounding."""

from __future__ import annotations

import math
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from embedserver.catalog import ModelSpec
from embedserver.runtime.architectures import cpu_math
from embedserver.runtime.architectures.cpu_math import (
    attention,
    causal_attention,
    qwen3_block,
    qwen3_block_at,
    silu,
)
from embedserver.runtime.loader import load_runner
from embedserver.runtime.pooling import pool


def test_powers_of_two_are_as_accurate_as_mlxs_exp_and_silu_matches_mlx() -> None:
    """The attention's exponentials are 2 ** (x log2 e), the scale folded in before: as accurate as MLX's exp."""
    x = mx.random.uniform(-80, 80, (4096,), key=mx.random.key(0))  # normal float32 results throughout
    exact = np.exp(np.array(x).astype(np.float64))
    ours_error = np.max(np.abs(np.array(mx.power(2.0, x * math.log2(math.e))) - exact) / exact)
    mlx_error = np.max(np.abs(np.array(mx.exp(x)) - exact) / exact)
    assert ours_error <= 1.5 * mlx_error + 1e-7
    assert np.allclose(np.array(silu(x)), np.array(nn.silu(x)), rtol=1e-5, atol=1e-30)
    assert float(silu(mx.array(-1000.0))) == 0.0 and float(silu(mx.array(1000.0))) == 1000.0


@pytest.mark.parametrize(("heads", "kv_heads", "length"), [(16, 8, 37), (4, 4, 128), (4, 1, 5), (2, 2, 1)])
def test_causal_attention_matches_mlx_sdpa(heads: int, kv_heads: int, length: int) -> None:
    key = mx.random.key(1)
    q, k, v = (
        mx.random.normal((3, h, length, 16), key=mx.random.split(key, 3)[i])
        for i, h in enumerate((heads, kv_heads, kv_heads))
    )
    ours = causal_attention(q, k, v, scale=0.25)
    theirs = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.25, mask="causal")
    assert ours.shape == (3, heads, length, 16)
    assert np.allclose(np.array(ours), np.array(theirs), atol=2e-6)


@pytest.mark.parametrize("length", [1, 63, 64, 65, 130, 200])
def test_causal_attention_in_blocks_of_queries_matches_mlx_sdpa(
    length: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every pass in blocks of 64 query rows, each against the keys up to its last row: a partial last block,
    exactly one block, and one row past it included."""
    monkeypatch.setattr(cpu_math, "SCORES_AT_ONCE", 0)
    key = mx.random.key(3)
    q, k, v = (
        mx.random.normal((2, h, length, 16), key=mx.random.split(key, 3)[i]) for i, h in enumerate((8, 2, 2))
    )
    ours = causal_attention(q, k, v, scale=0.25)
    theirs = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.25, mask="causal")
    assert ours.shape == (2, 8, length, 16)
    assert np.allclose(np.array(ours), np.array(theirs), atol=2e-6)


def test_long_texts_attend_in_memory_that_grows_with_their_length_not_its_square() -> None:
    """One 4,096-token text, 4 heads: all its scores at once are 268 MB (and the softmax's temporaries as
    much again, 623 MB at the peak); in blocks of queries the pass peaks under half of that one matrix."""
    length, heads = 4096, 4
    key = mx.random.key(4)
    q, k, v = (
        mx.random.normal((1, h, length, 16), key=mx.random.split(key, 3)[i])
        for i, h in enumerate((heads, 2, 2))
    )
    mx.eval(q, k, v)
    mx.reset_peak_memory()
    before = mx.get_active_memory()
    out = causal_attention(q, k, v, scale=0.25)
    mx.eval(out)
    scores_bytes = heads * length * length * 4
    assert mx.get_peak_memory() - before < scores_bytes / 2
    # The blocks' rows come back in order: spot-check rows of the first, a middle and the last block.
    rows = mx.array([0, 63, 64, 2047, 4095])
    reference = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.25, mask="causal")
    assert np.allclose(np.array(out[:, :, rows]), np.array(reference[:, :, rows]), atol=2e-6)


def test_masked_attention_matches_mlx_sdpa() -> None:
    """With an additive key mask hiding each row's padding (the general form under causal_attention)."""
    keys = mx.random.split(mx.random.key(2), 3)
    q, k, v = (mx.random.normal((3, 4, 9, 8), key=keys[i]) for i in range(3))
    real = mx.arange(9)[None, :] < mx.array([9, 5, 1])[:, None]
    mask = mx.where(real, 0.0, -1e9)[:, None, None, :]
    ours = attention(q, k, v, 0.3, mask)
    theirs = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.3, mask=mask)
    assert np.allclose(np.array(ours), np.array(theirs), atol=2e-6)


def test_the_last_layer_at_the_pooled_token_equals_the_full_layer_there(tiny_qwen3: Path) -> None:
    """Under last-token pooling the last layer runs at each sequence's pooled position only; it must give the
    full layer's states at those positions (rows of different lengths, one of a single token)."""
    model = load_runner(ModelSpec(name="t", source=str(tiny_qwen3))).encoder.model  # type: ignore[attr-defined]
    ids = mx.array(np.random.default_rng(0).integers(300, 30000, size=(5, 48)))
    rows = mx.array([47, 9, 32, 0, 46])
    h = qwen3_block(model.layers[0], model.embed_tokens(ids))
    full = qwen3_block(model.layers[-1], h)[mx.arange(5), rows]
    ours = qwen3_block_at(model.layers[-1], h, rows)
    assert ours.shape == (5, model.args.hidden_size)
    assert np.allclose(np.array(ours), np.array(full), atol=2e-6)


def test_the_engine_pools_the_same_vectors_through_the_shortcut(tiny_qwen3: Path) -> None:
    """The runner's last-token path (the shortcut above) against the whole pass followed by pooling."""
    runner = load_runner(ModelSpec(name="t", source=str(tiny_qwen3)))
    ids = mx.array(np.random.default_rng(1).integers(300, 30000, size=(4, 40)))
    lengths = mx.array([40, 7, 1, 23])
    whole = pool(runner.encoder(ids, lengths), lengths, "last")
    shortcut = runner.encoder.last_token_states(ids, lengths)  # type: ignore[attr-defined]
    assert np.allclose(np.array(shortcut), np.array(whole), atol=2e-6)
