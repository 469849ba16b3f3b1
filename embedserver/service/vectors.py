"""What happens to pooled vectors after the model and the cache: Matryoshka truncation, normalization, and
the wire encodings."""

from __future__ import annotations

import base64

import numpy as np


def finish(vectors: np.ndarray, *, dimensions: int | None, normalize: bool) -> np.ndarray:
    """Truncate to the first `dimensions` (Matryoshka), then L2-normalize; the cut must come first, or the
    shortened vector would not have unit norm."""
    out = vectors[:, :dimensions] if dimensions else vectors
    if normalize:
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out = out / np.maximum(norms, 1e-12)
    return np.ascontiguousarray(out, dtype=np.float32)


def to_base64(vector: np.ndarray) -> str:
    """Little-endian float32 bytes, as the OpenAI SDK decodes `encoding_format="base64"`."""
    return base64.b64encode(vector.astype("<f4", copy=False).tobytes()).decode("ascii")
