"""The Qwen3 layer on CUDA: mlx-lm's TransformerBlock with its projections fused and custom kernels.

Same weights and the same mathematics as mlx-lm's block (see cuda_kernels.py for the numerics), arranged for
fewer kernels and fewer passes over memory: q, k and v come from one matrix product (their weight rows
concatenated), gate and up from another; `qk_norm_rope` turns the first into attention's inputs and
`swiglu_norm` the second into the down projection's. One larger product keeps the GPU busier than three
small ones. Sequences of up to 32 tokens (bfloat16 or float16) take `short_attention`, which also normalizes
and rotates q and k, instead of `qk_norm_rope` and cuDNN's fused attention. Short passes are bound by the
host, which spends ~20 µs encoding each kernel, so kernels are what this layout saves:
- The post-attention RMSNorm is no kernel of its own: its weight is folded into the gate|up weights' columns
  at load (rms_norm(h) * g @ W = r * (h @ (g * W)), r = 1 / RMS(h) per row), and `swiglu_norm` applies r to
  the product's rows. The module keeps computing the same function (its norm weight becomes ones).
- The residual stream stays [tokens, hidden] through every layer (no reshapes to encode).
- The two residual additions are the output and down projections' own (`addmm`: cuBLAS adds the residual as
  it writes the product, instead of a separate kernel reading both back), so the residual stream is rounded
  to the dtype once per addition, from float32, where mlx-lm rounds the product and then the sum.
docs/perf/log.md has the figures.

The fused weight matrices are built once at load; the original projection weights become views of them, so
the model holds each weight once.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from embedserver.runtime.architectures.cuda_kernels import (
    SHORT_ATTENTION_USED,
    qk_norm_rope,
    rope_params,
    rope_table,
    short_attention,
    short_attention_takes,
    swiglu_norm,
)


def fusable(layer: nn.Module) -> bool:
    """Whether `layer` (an mlx-lm Qwen3 TransformerBlock) is one this module computes exactly: plain
    (unquantized, bias-free) projections, RMSNorms, and the standard RoPE over the whole head."""
    attn, mlp = layer.self_attn, layer.mlp
    linears = [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj]
    rope = attn.rope
    return (
        all(type(lin) is nn.Linear and "bias" not in lin for lin in linears)
        and type(layer.post_attention_layernorm) is nn.RMSNorm
        and type(rope) is nn.RoPE
        and not rope.traditional
        and rope.scale == 1.0
        and rope.dims == attn.q_norm.weight.shape[0]
        and rope.dims in (64, 128)
    )


def _fuse(*linears: nn.Linear, norm: nn.RMSNorm | None = None) -> mx.array:
    """One weight matrix with the rows of every projection in order; each projection's weight becomes a view
    of it, so nothing is stored twice. With `norm` (the RMSNorm before the projections), its weight is folded
    into the matrix's columns and becomes ones: the module computes the same function, and the norm's weight
    multiply happens once here instead of in every pass."""
    fused = mx.concatenate([lin.weight for lin in linears], axis=0)
    if norm is not None:
        fused = (fused * norm.weight).astype(fused.dtype)
        norm.weight = mx.ones_like(norm.weight)
    mx.eval(fused)
    start = 0
    for lin in linears:
        rows = lin.weight.shape[0]
        lin.weight = fused[start : start + rows]
        start += rows
    mx.eval([lin.weight for lin in linears])
    if norm is not None:
        mx.eval(norm.weight)
    return fused


class CudaQwen3Block:
    def __init__(self, layer: nn.Module) -> None:
        attn, mlp = layer.self_attn, layer.mlp
        self.heads, self.kv_heads = attn.n_heads, attn.n_kv_heads
        self.head_dim = attn.q_norm.weight.shape[0]
        self.scale = attn.scale
        self.scale_param = mx.array([attn.scale], dtype=mx.float32)  # what `short_attention` reads
        # Weights as [in, out]: transposed views made once here, not one transpose per product per pass (the
        # matrix products read either layout).
        self.w_qkv = _fuse(attn.q_proj, attn.k_proj, attn.v_proj).T
        post_norm = layer.post_attention_layernorm
        self.w_gate_up = _fuse(mlp.gate_proj, mlp.up_proj, norm=post_norm).T
        self.w_o, self.w_down = attn.o_proj.weight.T, mlp.down_proj.weight.T
        mx.eval(self.w_qkv, self.w_gate_up, self.w_o, self.w_down)
        self.q_norm, self.k_norm = attn.q_norm.weight, attn.k_norm.weight
        self.input_norm = layer.input_layernorm
        self.post_eps = mx.array([post_norm.eps], dtype=mx.float32)  # what `swiglu_norm` reads
        self.params = rope_params(attn.q_norm.eps, attn.rope.base)

    def rope_table(self, length: int) -> mx.array:
        """The cos/sin table for sequences of `length` (every layer of a model shares it)."""
        return rope_table(length, self.head_dim, self.params)

    def __call__(self, x: mx.array, table: mx.array, length: int) -> mx.array:
        """x: the residual stream [tokens, hidden] of sequences of `length` tokens (padded); returns the
        layer's output in the same layout."""
        qkv = self.input_norm(x) @ self.w_qkv
        if length <= SHORT_ATTENTION_USED and short_attention_takes(x.dtype, self.head_dim):
            heads_out = short_attention(
                qkv,
                self.q_norm,
                self.k_norm,
                table,
                self.params,
                self.scale_param,
                heads=self.heads,
                kv_heads=self.kv_heads,
                head_dim=self.head_dim,
                length=length,
            )
        else:
            q, k, v = qk_norm_rope(
                qkv.reshape(-1, length, qkv.shape[-1]),
                self.q_norm,
                self.k_norm,
                table,
                self.params,
                heads=self.heads,
                kv_heads=self.kv_heads,
                head_dim=self.head_dim,
            )
            attended = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask="causal")
            # In memory `attended` is [B, L, heads, D] (attention writes in its query's layout): this is a view.
            heads_out = attended.transpose(0, 2, 1, 3).reshape(x.shape[0], -1)
        h = mx.addmm(x, heads_out, self.w_o)
        gate_up = h @ self.w_gate_up  # the post-attention norm's weight is in w_gate_up, its 1 / RMS below
        return mx.addmm(h, swiglu_norm(gate_up, h, self.post_eps), self.w_down)
