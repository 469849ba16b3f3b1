"""BERT encoder in MLX (all-MiniLM-L6-v2 and friends): bidirectional attention over real tokens only,
post-LayerNorm, absolute positions, exact (erf) GELU, as transformers' BertModel computes it."""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn


class _Embeddings(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        hidden = cfg["hidden_size"]
        self.word_embeddings = nn.Embedding(cfg["vocab_size"], hidden)
        self.position_embeddings = nn.Embedding(cfg["max_position_embeddings"], hidden)
        self.token_type_embeddings = nn.Embedding(cfg.get("type_vocab_size", 2), hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=cfg.get("layer_norm_eps", 1e-12))

    def __call__(self, ids: mx.array) -> mx.array:
        positions = mx.arange(ids.shape[1])[None, :]
        h = (
            self.word_embeddings(ids)
            + self.position_embeddings(positions)
            + self.token_type_embeddings.weight[0]
        )
        return self.LayerNorm(h)


class _Layer(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        hidden, eps = cfg["hidden_size"], cfg.get("layer_norm_eps", 1e-12)
        self.heads = cfg["num_attention_heads"]
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.attention_out = nn.Linear(hidden, hidden)
        self.attention_norm = nn.LayerNorm(hidden, eps=eps)
        self.intermediate = nn.Linear(hidden, cfg["intermediate_size"])
        self.output = nn.Linear(cfg["intermediate_size"], hidden)
        self.output_norm = nn.LayerNorm(hidden, eps=eps)

    def __call__(self, x: mx.array, key_mask: mx.array) -> mx.array:
        batch, length, hidden = x.shape
        head_dim = hidden // self.heads

        def split(t: mx.array) -> mx.array:
            return t.reshape(batch, length, self.heads, head_dim).transpose(0, 2, 1, 3)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        attn = mx.fast.scaled_dot_product_attention(q, k, v, scale=head_dim**-0.5, mask=key_mask)
        attn = attn.transpose(0, 2, 1, 3).reshape(batch, length, hidden)
        h = self.attention_norm(x + self.attention_out(attn))
        return self.output_norm(h + self.output(nn.gelu(self.intermediate(h))))


class BertEncoder(nn.Module):
    causal = False

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        if config.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"unsupported BERT activation {config.get('hidden_act')!r}")
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("only absolute position embeddings are supported")
        self.hidden_size = int(config["hidden_size"])
        self.embeddings = _Embeddings(config)
        self.layers = [_Layer(config) for _ in range(config["num_hidden_layers"])]

    def use_cuda_kernels(self) -> bool:
        return False  # BERT has no custom kernels: MLX's own operations throughout

    def __call__(self, ids: mx.array, lengths: mx.array) -> mx.array:
        h = self.embeddings(ids)
        # Additive key mask: pads get -inf-like scores. Every row keeps its real tokens (length >= 1).
        real = mx.arange(ids.shape[1])[None, :] < lengths[:, None]
        key_mask = mx.where(real, 0.0, -1e9).astype(h.dtype)[:, None, None, :]
        for layer in self.layers:
            h = layer(h, key_mask)
        return h

    @staticmethod
    def sanitize(weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """Rename transformers' BertModel keys onto this module; drop the pooler (unused by embeddings)."""
        renames = (
            ("encoder.layer.", "layers."),
            ("attention.self.", ""),
            ("attention.output.dense.", "attention_out."),
            ("attention.output.LayerNorm.", "attention_norm."),
            ("intermediate.dense.", "intermediate."),
            ("output.dense.", "output."),
            ("output.LayerNorm.", "output_norm."),
        )
        out = {}
        for key, value in weights.items():
            key = key.removeprefix("bert.")
            if key.startswith(("pooler.", "cls.")) or key.endswith("position_ids"):
                continue
            for old, new in renames:
                key = key.replace(old, new)
            out[key] = value
        return out
