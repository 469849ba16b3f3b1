"""Whether a benchmarked server answers what the model alone computes: its vectors for a few texts against the
model alone's for the same texts, as the least cosine. A fast path that computes the wrong thing (a compiled
graph, a kernel, a batch's rows mixed up) would otherwise only show as a faster figure.

The texts go once a request each (on CUDA a lone text's pass is a compiled graph) and once all in one request
(one padded batch), so both of the paths a pass can take are compared.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np


def answer_vectors(data: list[dict[str, Any]]) -> list[np.ndarray]:
    """The vectors of an OpenAI-style answer's `data`, in order, whether sent as base64 (little-endian
    float32) or as lists of floats."""
    return [
        np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
        if isinstance(item["embedding"], str)
        else np.asarray(item["embedding"])
        for item in data
    ]


def cosine_min(url: str, texts: list[str], reference: np.ndarray) -> dict[str, float]:
    """The least cosine between the server's vector for each of `texts` (POST /v1/embeddings, the server's
    default model) and `reference`, the model alone's vectors for them, one row a text: for the texts sent one
    a request ("alone") and all in one ("together"). The model alone computes them in one batch, as
    "together" does; a lone text's pass has other shapes, so its products round differently."""
    import httpx

    with httpx.Client(timeout=120) as client:

        def embed(texts_in_request: list[str]) -> np.ndarray:
            answer = client.post(
                f"{url}/v1/embeddings", json={"input": texts_in_request, "encoding_format": "base64"}
            )
            answer.raise_for_status()
            return np.stack(answer_vectors(answer.json()["data"]))

        alone = np.concatenate([embed([text]) for text in texts])
        together = embed(texts)
    want = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    return {
        path: float((got / np.linalg.norm(got, axis=1, keepdims=True) * want).sum(axis=1).min())
        for path, got in (("alone", alone), ("together", together))
    }
