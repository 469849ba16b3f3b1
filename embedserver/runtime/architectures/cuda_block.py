"""The Qwen3 layer on CUDA: mlx-lm's TransformerBlock with its projections fused and custom kernels.

Same weights and the same mathematics as mlx-lm's block (see cuda_kernels.py for the numerics), arranged for
fewer passes over memory: q, k and v come from one matrix product (their weight rows concatenated), gate and
up from another; attention reads the first and `swiglu` turns the second into the down projection's input.
One larger product keeps the GPU busier than three small ones. Sequences of up to 64 tokens, and small
batches of up to 128 (bfloat16 or float16), take cuda_attention.py's kernel, which normalizes and rotates q
and k itself, instead of `qk_norm_rope` and cuDNN's fused attention: the host encodes one kernel fewer a layer
and no cuDNN graph, and small passes are bound by the host.
The residual stream is flat, [B * L, hidden], from the embedding to the last layer: the matrix products
and the kernels read rows, and in the [B, L, hidden] shape every layer made three reshapes, each an
operation MLX's graph evaluates on the host (a quarter of a short pass's operations; docs/perf/log.md).
The two residual additions are the output and down projections' own (`addmm`: cuBLAS adds the residual as it
writes the product, instead of a separate kernel reading both back), so the residual stream is rounded to the
dtype once per addition, from float32, where mlx-lm rounds the product and then the sum. docs/perf/log.md
has the figures.

The fused weight matrices are built once at load; the original projection weights become views of them, so
the model holds each weight once.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from embedserver.runtime.architectures.cuda_attention import (
    GROUPED_ATTENTION_MAX,
    GROUPED_ATTENTION_TOKENS,
    GROUPED_ATTENTION_USED,
    attention_takes,
    grouped_attention,
)
from embedserver.runtime.architectures.cuda_kernels import qk_norm_rope, rope_params, rope_table, swiglu


def fusable(layer: nn.Module) -> bool:
    """Whether `layer` (an mlx-lm Qwen3 TransformerBlock) is one this module computes exactly: plain
    (unquantized, bias-free) projections, RMSNorm's norms and the standard RoPE over the whole head."""
    attn, mlp = layer.self_attn, layer.mlp
    norms = [layer.input_layernorm, layer.post_attention_layernorm]
    linears = [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj]
    rope = attn.rope
    return (
        all(type(lin) is nn.Linear and "bias" not in lin for lin in linears)
        and all(type(norm) is nn.RMSNorm for norm in norms)
        and type(rope) is nn.RoPE
        and not rope.traditional
        and rope.scale == 1.0
        and rope.dims == attn.q_norm.weight.shape[0]
        and rope.dims in (64, 128)
    )


def _fuse(*linears: nn.Linear) -> mx.array:
    """One weight matrix with the rows of every projection in order; each projection's weight becomes a view
    of it, so nothing is stored twice."""
    fused = mx.concatenate([lin.weight for lin in linears], axis=0)
    mx.eval(fused)
    start = 0
    for lin in linears:
        rows = lin.weight.shape[0]
        lin.weight = fused[start : start + rows]
        start += rows
    mx.eval([lin.weight for lin in linears])
    return fused


class CudaQwen3Block:
    def __init__(self, layer: nn.Module) -> None:
        attn, mlp = layer.self_attn, layer.mlp
        self.heads, self.kv_heads = attn.n_heads, attn.n_kv_heads
        self.head_dim = attn.q_norm.weight.shape[0]
        self.scale = attn.scale
        self.scale_param = mx.array([attn.scale], dtype=mx.float32)  # what the attention kernels read
        # Weights as [in, out]: transposed views made once here, not one transpose per product per pass (the
        # matrix products read either layout).
        self.w_qkv = _fuse(attn.q_proj, attn.k_proj, attn.v_proj).T
        self.w_gate_up = _fuse(mlp.gate_proj, mlp.up_proj).T
        self.w_o, self.w_down = attn.o_proj.weight.T, mlp.down_proj.weight.T
        mx.eval(self.w_qkv, self.w_gate_up, self.w_o, self.w_down)
        self.q_norm, self.k_norm = attn.q_norm.weight, attn.k_norm.weight
        # The norms as mlx-lm's RMSNorm modules compute them, called directly (a pass calls them 56 times).
        self.input_norm, self.input_eps = layer.input_layernorm.weight, layer.input_layernorm.eps
        self.post_norm, self.post_eps = (
            layer.post_attention_layernorm.weight,
            layer.post_attention_layernorm.eps,
        )
        self.params = rope_params(attn.q_norm.eps, attn.rope.base)

    def rope_table(self, length: int) -> mx.array:
        """The cos/sin table for sequences of `length` (every layer of a model shares it)."""
        return rope_table(length, self.head_dim, self.params)

    def _uses_grouped_attention(self, batch: int, length: int, dtype: mx.Dtype) -> bool:
        """Whether `grouped_attention` takes this pass (cuda_attention.py says where it is the faster) or
        `qk_norm_rope` and cuDNN's fused attention do."""
        if not attention_takes(dtype, self.head_dim):
            return False
        if length <= GROUPED_ATTENTION_USED:
            return True
        return length <= GROUPED_ATTENTION_MAX and batch * length <= GROUPED_ATTENTION_TOKENS

    def __call__(self, x: mx.array, table: mx.array, length: int, picked: mx.array | None = None) -> mx.array:
        """The layer on the flat stream: x [B * L, hidden], the rows of B sequences of `length` tokens, in and
        out (see the module's doc for why flat). With `picked` (indices into x's rows), the output at those
        rows only, [len(picked), hidden]: every row still gives its keys and values, but the output
        projection, the MLP and the residual additions run on the picked rows alone. The last layer under
        last-token pooling needs one row a sequence, and those products are most of a layer's arithmetic
        (~70% of its multiply-adds on the 0.6B model: a 256 x 128 pass ~2% shorter on an H200)."""
        rows = x.shape[0]
        batch = rows // length
        qkv = mx.fast.rms_norm(x, self.input_norm, self.input_eps) @ self.w_qkv
        if self._uses_grouped_attention(batch, length, x.dtype):
            heads_out = grouped_attention(
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
                qkv.reshape(batch, length, -1),
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
            heads_out = attended.transpose(0, 2, 1, 3).reshape(rows, -1)
        if picked is not None:
            heads_out, x = heads_out[picked], x[picked]
        h = mx.addmm(x, heads_out, self.w_o)
        gate_up = mx.fast.rms_norm(h, self.post_norm, self.post_eps) @ self.w_gate_up
        return mx.addmm(h, swiglu(gate_up), self.w_down)
