"""The CPU block's functions against MLX's own: same values to float32 rounding."""

from __future__ import annotations

import math
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from embedserver.catalog import ModelSpec
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
