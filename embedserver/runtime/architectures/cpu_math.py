"""Attention and SiLU for MLX's CPU backend, where exponentials, not matrix products, dominated.

MLX's CPU `exp` (used by its softmax, SiLU and attention) evaluates one element at a time, while
`power(2, x * log2 e)` is vectorized and about twice as fast with the same accuracy; in a small model's
forward pass on CPU the softmax and SiLU took most of the time, more than the matrix products (docs/perf/log.md).
This block is mlx-lm's
Qwen3 `TransformerBlock` (same weights, same order of operations, causal attention with grouped KV heads)
with those two functions written through `power`. GPUs keep mlx-lm's fused kernels. (The BERT encoder keeps
MLX's attention: with `attention` below it measured the same, its matrix products dominating.)
"""

from __future__ import annotations

import math
from typing import Any

import mlx.core as mx

_LOG2E = math.log2(math.e)


def silu(x: mx.array) -> mx.array:
    # Where 2**(-x log2 e) overflows to inf (x < -88) this gives x / inf = -0.0, SiLU's limit.
    return x / (1.0 + mx.power(2.0, x * -_LOG2E))


def on_cpu() -> bool:
    return bool(mx.default_device() == mx.cpu)


def attention(q: mx.array, k: mx.array, v: mx.array, scale: float, mask: mx.array) -> mx.array:
    """softmax(q k^T * scale + mask) v for q, k, v [B, H, L, D] and an additive mask broadcastable to the
    scores [B, H, L, L]. Fewer passes over the L x L scores, where the time goes: the scores are made in base 2
    (scale and log2 e folded into q, which is L x D, and into the mask, which broadcasts), and the weights
    are normalized after the product with v (L x D values instead of L x L)."""
    scores = (q * (scale * _LOG2E)) @ k.swapaxes(-1, -2) + mask * _LOG2E
    weights = mx.power(2.0, scores - scores.max(axis=-1, keepdims=True))
    return (weights @ v) / weights.sum(axis=-1, keepdims=True)


# Past SCORES_AT_ONCE scores in a pass, causal_attention takes its queries BLOCK_ROWS at a time.
SCORES_AT_ONCE = 1 << 20
BLOCK_ROWS = 64


def causal_attention(q: mx.array, k: mx.array, v: mx.array, scale: float) -> mx.array:
    """softmax(q k^T * scale + causal mask) v for q [B, H, L, D] and k, v [B, KV, L, D], H a multiple of KV.

    Past SCORES_AT_ONCE scores the queries go in blocks of BLOCK_ROWS rows, each block against only the keys
    up to its last row (the causal mask hides the later ones from all of its rows). All at once, the 0.6B
    model's scores for one text of 8,192 tokens are 4.3 GB a layer, and 9 GB at the softmax's peak,
    and a batch of such texts several times that. In blocks a pass holds B x H x 64 x L scores
    at a time and computes about half as many for long texts, and the blocks' smaller arrays are also
    faster to stream: on a 2-core x86 VM with OpenBLAS, 16 heads of 2,048 tokens took 0.50 s against 0.87,
    8 texts of 512 tokens 0.29-0.33 s against 0.48, 32 of 128 the same (docs/perf/log.md)."""
    batch, heads, length, dim = q.shape
    kv_heads = k.shape[1]
    grouped = q.reshape(batch, kv_heads, heads // kv_heads, length, dim)
    keys, values = k[:, :, None], v[:, :, None]
    rows = length if batch * heads * length * length <= SCORES_AT_ONCE else BLOCK_ROWS
    blocks = []
    for start in range(0, length, rows):
        end = min(start + rows, length)
        # The block's row r is position start + r, which sees keys 0 to start + r.
        causal = mx.triu(mx.full((end - start, end), -mx.inf, dtype=q.dtype), k=start + 1)
        blocks.append(
            attention(grouped[..., start:end, :], keys[..., :end, :], values[..., :end, :], scale, causal)
        )
    out = blocks[0] if len(blocks) == 1 else mx.concatenate(blocks, axis=-2)
    return out.reshape(batch, heads, length, dim)


def _heads(h: mx.array, proj: Any, heads: int, norm: Any = None) -> mx.array:
    """[B, L, hidden] through a projection (and a per-head norm) into [B, heads, L, head_dim]."""
    batch, length, _ = h.shape
    split = proj(h).reshape(batch, length, heads, -1)
    return (split if norm is None else norm(split)).transpose(0, 2, 1, 3)


def _keys_values(attn: Any, h: mx.array) -> tuple[mx.array, mx.array]:
    """Every position's keys (normed, rotated) and values, [B, KV, L, head_dim]."""
    keys = attn.rope(_heads(h, attn.k_proj, attn.n_kv_heads, attn.k_norm))
    return keys, _heads(h, attn.v_proj, attn.n_kv_heads)


def _with_mlp(layer: Any, x: mx.array) -> mx.array:
    """The block's second half: x plus its MLP of the normed x."""
    mlp, g = layer.mlp, layer.post_attention_layernorm(x)
    return x + mlp.down_proj(silu(mlp.gate_proj(g)) * mlp.up_proj(g))


def qwen3_block(layer: Any, x: mx.array) -> mx.array:
    """mlx-lm's Qwen3 TransformerBlock.__call__ with a causal mask and no cache, on the functions above."""
    attn = layer.self_attn
    h = layer.input_layernorm(x)
    batch, length, _ = h.shape
    q = attn.rope(_heads(h, attn.q_proj, attn.n_heads, attn.q_norm))
    k, v = _keys_values(attn, h)
    out = causal_attention(q, k, v, attn.scale)
    return _with_mlp(layer, x + attn.o_proj(out.transpose(0, 2, 1, 3).reshape(batch, length, -1)))


def qwen3_block_at(layer: Any, x: mx.array, rows: mx.array) -> mx.array:
    """`qwen3_block(layer, x)` at one position per sequence only, `rows` [B]: [B, hidden]. For the last layer
    under last-token pooling: the keys and values still come from every position, but the queries, the
    attention scores and the MLP only from the pooled one (on the 2-layer test model this was a third of the
    forward pass). Same values as the full block at those positions, to float32 rounding."""
    attn = layer.self_attn
    h = layer.input_layernorm(x)
    batch, length, _ = h.shape
    picked = mx.arange(batch)
    # One query per sequence, each rotated at its own row, as the full block rotates it: [B * heads, 1, D].
    q = attn.q_norm(attn.q_proj(h[picked, rows]).reshape(batch * attn.n_heads, 1, -1))
    q = attn.rope(q, offset=mx.repeat(rows, attn.n_heads))
    k, v = _keys_values(attn, h)
    grouped = q.reshape(batch, attn.n_kv_heads, attn.n_heads // attn.n_kv_heads, 1, -1)
    # Keys after the pooled position are masked, as the causal mask masks them for that row.
    later = mx.arange(length)[None, :] > rows[:, None]
    mask = mx.where(later, -mx.inf, 0.0).astype(x.dtype).reshape(batch, 1, 1, 1, length)
    out = attention(grouped, k[:, :, None], v[:, :, None], attn.scale, mask).reshape(batch, 1, -1)
    return _with_mlp(layer, x[picked, rows][:, None] + attn.o_proj(out))[:, 0]
