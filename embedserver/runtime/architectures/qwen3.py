"""Qwen3 decoder as an embedding encoder, built on mlx-lm's Qwen3 layers.

The layers are run one by one with an explicit causal mask: with right padding, a causal mask already keeps
every real token from seeing the pads after it, so no key mask is needed, and the pooled state at
`length - 1` is exactly what the model computes for that text alone.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn

from embedserver.runtime.architectures.cpu_math import on_cpu, qwen3_block, qwen3_block_at
from embedserver.runtime.architectures.cuda_block import CudaQwen3Block, fusable
from embedserver.runtime.architectures.cuda_kernels import embed_rows, embed_rows_fits
from embedserver.runtime.architectures.mlx_lm_models import models_module
from embedserver.runtime.pooling import pool

_layers = models_module("qwen3")  # mlx-lm's Qwen3 (see mlx_lm_models.py for why not `import mlx_lm`)

# The CUDA path queues a pass's first layers before it builds the rest (`queue_early`). Nothing reaches the
# device before the pass is evaluated, and its graph is built in Python first (1-2 ms for the 0.6B model's 28
# layers on an H200's host), so the device would wait that long. Queued first (MLX commits a command buffer
# every 8 operations here, embedserver/runtime/__init__.py), two layers run while the host builds the rest.
# On an H200 (0.6B shape; docs/perf/log.md, 2026-12-04): 8 x 128 4.98-5.01 ms a pass against 5.45-5.57,
# 64 x 128 16.25-16.31 against 17.15-17.55, 128 x 128 31.6 against 32.4-32.7, 32 x 512 32.8-32.9 against
# 33.7-33.9, 256 x 128 61.7 against 61.9-62.1. A pass of fewer tokens is bound by the host, and one text
# was no faster (3.5-5.5 ms against 3.4-3.6). In the server one client's request of 64 / 256 such texts was
# answered 0.9 / 2.1 ms sooner; under many clients passes overlap already (runner.launch), and nothing moved.
# Not inside `mx.compile`, which cannot evaluate while it traces.
QUEUED_FIRST = 2
QUEUE_EARLY_TOKENS = 1024


class Qwen3Encoder(nn.Module):
    causal = True

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        config = {"tie_word_embeddings": True, "max_position_embeddings": 32768, **config}
        config.setdefault("head_dim", config["hidden_size"] // config["num_attention_heads"])
        self.args = _layers.ModelArgs.from_dict(config)
        self.model = _layers.Qwen3Model(self.args)
        self.hidden_size = self.args.hidden_size
        # Set by use_cuda_kernels(); kept out of the module tree (it holds views of the same weights).
        object.__setattr__(self, "_cuda_blocks", None)
        object.__setattr__(self, "_cuda_embed", False)
        # RoPE's cos/sin table (CUDA path) for every position of the model's context, made once: row l
        # depends on l alone, so one table serves every length, and no pass spends launches remaking it.
        object.__setattr__(self, "_rope_table", None)

    def use_cuda_kernels(self) -> bool:
        """Run the layers as CudaQwen3Block (fused projections, custom kernels; see cuda_block.py). Call once,
        after the weights are loaded, on a CUDA device. False when a layer is not of the form it computes."""
        layers = self.model.layers
        if not all(fusable(layer) for layer in layers):
            return False
        object.__setattr__(self, "_cuda_blocks", [CudaQwen3Block(layer) for layer in layers])
        embed = self.model.embed_tokens
        object.__setattr__(self, "_cuda_embed", type(embed) is nn.Embedding and embed_rows_fits(embed.weight))
        if mx.cuda.is_available():  # made now, not inside the first (possibly compiled) pass
            table = self._cuda_blocks[0].rope_table(self.args.max_position_embeddings)
            mx.eval(table)
            object.__setattr__(self, "_rope_table", table)
        return True

    def __call__(self, ids: mx.array, lengths: mx.array) -> mx.array:
        del lengths  # right padding + causal mask: pads are invisible to real tokens
        model = self.model
        if self._cuda_blocks:
            return model.norm(self._cuda_states(ids))
        h = model.embed_tokens(ids)
        cpu = on_cpu()  # see cpu_math.py: MLX's CPU exp is the bottleneck there
        for layer in model.layers:
            # On GPUs, mlx-lm's block; it passes "causal" on to the fused attention kernel.
            h = qwen3_block(layer, h) if cpu else layer(h, "causal", None)  # type: ignore[arg-type]
        return model.norm(h)

    def _cuda_states(
        self, ids: mx.array, queue_early: bool = False, picked: mx.array | None = None
    ) -> mx.array:
        """The CUDA path: the last layer's states [B, L, hidden], before the final norm. The layers pass the
        stream flat, [B * L, hidden] (cuda_block.py). `queue_early`: the first QUEUED_FIRST layers of a pass
        of at least QUEUE_EARLY_TOKENS padded tokens go to the device before the rest are built. With `picked`
        (indices into the flat stream), the last layer's states at those rows only, [len(picked), hidden]."""
        blocks = self._cuda_blocks
        assert blocks
        embed = self.model.embed_tokens
        batch, length = ids.shape
        h = embed_rows(embed.weight, ids) if self._cuda_embed else embed(ids)
        h = h.reshape(batch * length, -1)
        table = self._rope_table
        if table is None or table.shape[0] < length:  # longer than the model's declared context
            table = blocks[0].rope_table(length)
        queued = QUEUED_FIRST if queue_early and ids.size >= QUEUE_EARLY_TOKENS else 0
        last = len(blocks) - 1
        for index, block in enumerate(blocks):
            h = block(h, table, length, picked if index == last else None)
            if index + 1 == queued:
                mx.async_eval(h)  # type: ignore[no-untyped-call]
        return h if picked is not None else h.reshape(batch, length, -1)

    def last_token_states(self, ids: mx.array, lengths: mx.array, *, queue_early: bool = False) -> mx.array:
        """The final states at each sequence's last real token, [B, hidden]: last-token pooling. On CPU the
        last layer runs at that token only (cpu_math.qwen3_block_at; the same values); on CUDA the last
        layer's output projection and MLP, and the final norm, run on those rows only (CudaQwen3Block's
        `picked`), and `queue_early` is `_cuda_states`'; on other GPUs the whole pass runs and the rows are
        picked."""
        if self._cuda_blocks:
            batch, length = ids.shape
            # Row b's last real token in the flat stream, b * L + lengths[b] - 1: one range and one addition,
            # operations a short pass's host queues like any kernel.
            picked = mx.arange(-1, batch * length - 1, length, dtype=lengths.dtype) + lengths
            return self.model.norm(self._cuda_states(ids, queue_early, picked))
        if not on_cpu():
            return pool(self(ids, lengths), lengths, "last")
        model = self.model
        h = model.embed_tokens(ids)
        *first, last = model.layers
        for layer in first:
            h = qwen3_block(layer, h)
        return model.norm(qwen3_block_at(last, h, lengths - 1))

    @staticmethod
    def sanitize(weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """Map both checkpoint layouts onto `model.*`: originals store a bare Qwen3Model (no prefix), MLX
        conversions prefix `model.`; an `lm_head` (generation only) is dropped."""
        out = {}
        for key, value in weights.items():
            if key.startswith("lm_head."):
                continue
            out[key if key.startswith("model.") else f"model.{key}"] = value
        return out
