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


@dataclass(frozen=True)
class EmbedOutcome:
    model: str
    vectors: np.ndarray  # [n, dimensions], float32
    tokens: int
    cached: list[bool]
