"""What an embedding request asks for and what it gets back, free of HTTP and of MLX (the front-end
processes import these without loading the model's libraries)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class EmbedCall:
    inputs: list[str] | list[list[int]]
    model: str | None = None
    instruction: str | None = None
    input_type: Literal["query", "document"] | None = None
    dimensions: int | None = None
    normalize: bool = True
    truncate: bool | None = None
    # Token-id inputs came through OpenAI's API: OPENAI_TOKEN_IDS says whose ids they are.
    openai_ids: bool = False


@dataclass(frozen=True)
class RerankCall:
    query: str
    documents: list[str]
    model: str | None = None
    instruction: str | None = None


@dataclass(frozen=True)
class RerankOutcome:
    model: str
    scores: list[float]  # P(yes) per document, in the order sent
    logits: list[float]  # logit(yes) - logit(no): the raw scores
    tokens: int


@dataclass(frozen=True)
class EmbedOutcome:
    model: str
    vectors: np.ndarray  # [n, dimensions], float32
    tokens: int
    cached: list[bool]
