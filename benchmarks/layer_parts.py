"""Where a Qwen3 forward pass spends its time on the GPU: each part of a layer alone, repeated once per layer
(so launch costs count as in the model), against the whole layer; the matrix products also fused (QKV in one
product, gate and up in one) and, for reference, in torch (cuBLAS) on the same shapes.

    python benchmarks/layer_parts.py [--shape 0.6b] [--rows 256] [--length 128]

Random weights of the real shape, bf16; milliseconds per forward pass (all layers), median of 7.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import embedserver  # noqa: F401  (BLAS preload before MLX)
from embedserver.runtime.architectures.cuda_block import CudaQwen3Block
from embedserver.runtime.architectures.cuda_kernels import qk_norm_rope
from embedserver.runtime.architectures.cuda_kernels import swiglu as cuda_swiglu
from embedserver_testing.random_model import SHAPES, VOCAB_SIZE


def median_ms(fn: Callable[[], object], sync: Callable[[object], None], repeat: int = 7) -> float:
    for _ in range(2):
        sync(fn())
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        sync(fn())
        times.append(time.perf_counter() - started)
    return float(np.median(times)) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="0.6b", choices=sorted(SHAPES))
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--length", type=int, default=128)
    args = parser.parse_args()

    import mlx.core as mx
    from mlx_lm.models.activations import swiglu
    from mlx_lm.models.qwen3 import ModelArgs, TransformerBlock

    config = {
        "model_type": "qwen3",
        "tie_word_embeddings": True,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1_000_000,
        "vocab_size": VOCAB_SIZE,
    }
    config.update(SHAPES[args.shape])
    margs = ModelArgs.from_dict(config)
    layers_n, hidden = margs.num_hidden_layers, margs.hidden_size
    heads, kv_heads, head_dim = margs.num_attention_heads, margs.num_key_value_heads, margs.head_dim
    inter = margs.intermediate_size
    rows, length = args.rows, args.length
    tokens = rows * length

    block = TransformerBlock(margs)
    block.set_dtype(mx.bfloat16)
    attn, mlp = block.self_attn, block.mlp
    x = mx.random.normal((rows, length, hidden)).astype(mx.bfloat16)
    mx.eval(block.parameters(), x)

    def weight(out_dim: int, in_dim: int) -> mx.array:
        return (mx.random.normal((out_dim, in_dim)) * 0.02).astype(mx.bfloat16)

    w_qkv = weight((heads + 2 * kv_heads) * head_dim, hidden)
    w_gu = weight(2 * inter, hidden)
    q = mx.random.normal((rows, heads, length, head_dim)).astype(mx.bfloat16)
    k = mx.random.normal((rows, kv_heads, length, head_dim)).astype(mx.bfloat16)
    v = mx.random.normal((rows, kv_heads, length, head_dim)).astype(mx.bfloat16)
    a = mx.random.normal((rows, length, heads * head_dim)).astype(mx.bfloat16)
    g = mx.random.normal((rows, length, inter)).astype(mx.bfloat16)
    mx.eval(w_qkv, w_gu, q, k, v, a, g)

    def per_layer(part: Callable[[], object]) -> Callable[[], list[object]]:
        return lambda: [part() for _ in range(layers_n)]

    def chained(step: Callable[[mx.array], mx.array]) -> Callable[[], mx.array]:
        def run() -> mx.array:
            h = x
            for _ in range(layers_n):
                h = step(h)
            return h

        return run

    def heads_view(t: mx.array, n: int) -> mx.array:
        return t.reshape(rows, length, n, -1).transpose(0, 2, 1, 3)

    reference = chained(lambda h: block(h, "causal", None))
    mx.eval(reference())  # before CudaQwen3Block turns the block's projection weights into views
    cuda_layer = CudaQwen3Block(block) if mx.cuda.is_available() else None
    parts: dict[str, Callable[[], object]] = {
        "whole layer (mlx-lm block)": reference,
        "whole layer, mx.compile": chained(mx.compile(lambda h: block(h, "causal", None))),
    }
    if cuda_layer is not None:
        qkv = (x @ w_qkv.T).astype(mx.bfloat16)
        gate_up = (x.reshape(tokens, hidden) @ w_gu.T).astype(mx.bfloat16)
        mx.eval(qkv, gate_up)
        kernel_args = {"heads": heads, "kv_heads": kv_heads, "head_dim": head_dim}
        parts["whole layer, CudaQwen3Block"] = chained(cuda_layer)
        parts["  its qk_norm_rope kernel"] = per_layer(
            lambda: qk_norm_rope(qkv, cuda_layer.q_norm, cuda_layer.k_norm, cuda_layer.params, **kernel_args)
        )
        parts["  its swiglu kernel"] = per_layer(lambda: cuda_swiglu(gate_up))
        parts["  attention output to [B, L, H*D]"] = per_layer(
            lambda: q.transpose(0, 2, 1, 3).reshape(rows, length, -1)
        )
    parts |= {
        "q, k, v products": per_layer(
            lambda: mx.concatenate([attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)], -1)
        ),
        "qkv as one product": per_layer(lambda: x @ w_qkv.T),
        "o product": per_layer(lambda: attn.o_proj(a)),
        "gate, up products": per_layer(lambda: mlp.gate_proj(x) + mlp.up_proj(x)),
        "gate+up as one product": per_layer(lambda: x @ w_gu.T),
        "down product": per_layer(lambda: mlp.down_proj(g)),
        "attention (sdpa, causal)": per_layer(
            lambda: mx.fast.scaled_dot_product_attention(q, k, v, scale=head_dim**-0.5, mask="causal")
        ),
        "q/k norm + rope + transposes": per_layer(
            lambda: [
                attn.rope(attn.q_norm(heads_view(a, heads))),
                attn.rope(attn.k_norm(heads_view(a[..., : kv_heads * head_dim], kv_heads))),
            ]
        ),
        "swiglu": per_layer(lambda: swiglu(g, g)),
        "2 rmsnorms + 2 residual adds": per_layer(
            lambda: block.post_attention_layernorm(block.input_layernorm(x) + x) + x
        ),
    }
    print(f"{args.shape} shape, {rows} x {length} tokens, {layers_n} layers, bf16, MLX {mx.__version__}")
    whole = 0.0
    for name, fn in parts.items():
        ms = median_ms(fn, mx.eval)
        whole = whole or ms
        extra = f"   {tokens / ms * 1000:9,.0f} tokens/s" if name.startswith("whole") else ""
        print(f"  {name:34s} {ms:8.2f} ms  {ms / whole:6.1%}{extra}", flush=True)

    try:
        import torch
    except ImportError:
        return
    if not torch.cuda.is_available():
        return
    tx = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16)
    tg = torch.randn(tokens, inter, device="cuda", dtype=torch.bfloat16)
    ta = torch.randn(tokens, heads * head_dim, device="cuda", dtype=torch.bfloat16)
    shapes = {
        "qkv as one product": (tx, (heads + 2 * kv_heads) * head_dim),
        "o product": (ta, hidden),
        "gate+up as one product": (tx, 2 * inter),
        "down product": (tg, hidden),
    }
    print(f"torch {torch.__version__} (cuBLAS), same products:")

    def torch_sync(_: object) -> None:
        torch.cuda.synchronize()

    for name, (inp, out_dim) in shapes.items():
        w = torch.randn(out_dim, inp.shape[1], device="cuda", dtype=torch.bfloat16) * 0.02
        ms = median_ms(
            lambda inp=inp, w=w: [torch.nn.functional.linear(inp, w) for _ in range(layers_n)], torch_sync
        )
        flops = 2 * tokens * inp.shape[1] * out_dim * layers_n
        print(f"  {name:34s} {ms:8.2f} ms  {flops / ms / 1e9:6.0f} TFLOP/s", flush=True)


if __name__ == "__main__":
    main()
