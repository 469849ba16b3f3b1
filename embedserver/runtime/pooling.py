"""Pooling hidden states [B, L, H] of right-padded batches into one vector per sequence."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import mlx.core as mx

Pooling = Literal["last", "mean", "cls"]

_ST_MODES: dict[str, Pooling] = {
    "pooling_mode_lasttoken": "last",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
}


def pool(hidden: mx.array, lengths: mx.array, mode: Pooling) -> mx.array:
    if mode == "last":
        # The last real token: for Qwen3-Embedding, the appended <|endoftext|>.
        return hidden[mx.arange(hidden.shape[0]), lengths - 1]
    if mode == "cls":
        return hidden[:, 0]
    real = (mx.arange(hidden.shape[1])[None, :] < lengths[:, None]).astype(mx.float32)
    summed = (hidden.astype(mx.float32) * real[:, :, None]).sum(axis=1)
    return summed / lengths[:, None].astype(mx.float32)


def declared_pooling(model_dir: Path) -> Pooling | None:
    """The pooling a sentence-transformers model declares in 1_Pooling/config.json, if it has one."""
    path = model_dir / "1_Pooling" / "config.json"
    if not path.is_file():
        return None
    config = json.loads(path.read_text())
    modes = [mode for key, mode in _ST_MODES.items() if config.get(key)]
    if len(modes) != 1:
        raise ValueError(f"{path}: expected exactly one supported pooling mode, found {modes or 'none'}")
    return modes[0]
