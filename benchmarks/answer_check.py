"""The load test's check of an embedding answer (benchmarks/locustfile.py), apart from locust so tests can
import it (importing locust patches the whole process for gevent)."""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.server_answers import answer_vectors


class AnswerCheck:
    """Whether 200 answers are right for what was sent: one vector per text, every vector of the dimension the
    first answer had, each of norm 1 (the server normalizes by default)."""

    def __init__(self) -> None:
        self.dimension = 0

    def wrong(self, path: str, body: dict[str, Any], answer: dict[str, Any]) -> str | None:
        """Why the answer is wrong for the request sent, or None when it is right."""
        if path == "/embed":
            vectors = [answer["embedding"]]
        elif path == "/embed_batch":
            vectors = answer["embeddings"]
        else:
            vectors = answer_vectors(answer["data"])
        sent = body.get("input", body.get("texts", [body.get("text")]))
        count = 1 if isinstance(sent, str) else len(sent)
        if len(vectors) != count:
            return f"{len(vectors)} vectors for {count} texts"
        matrix = np.asarray(vectors, dtype=np.float64)
        expected = self.dimension or matrix.shape[1]
        self.dimension = expected
        if matrix.shape[1] != expected:
            return f"dimension {matrix.shape[1]}, earlier answers had {expected}"
        norms = np.linalg.norm(matrix, axis=1)
        if not np.allclose(norms, 1.0, atol=1e-3):
            return f"norms {norms.min():.4f}..{norms.max():.4f}, not 1"
        return None
