"""An embedding request's semantics before and after the model, free of MLX: validation, instructions,
tokenization and truncation, cache keys, and Matryoshka truncation with normalization.

The single process runs all of it beside the model (embeddings.py). With front-end processes (HTTP_WORKERS)
each front-end runs it itself, with its own copy of the model's tokenizer described by a `ModelInfo`, and
sends the engine only token ids and cache keys (`PreparedRequest`): tokenization, the costliest per-text work
outside the model, then scales with the front-ends instead of weighing on the one process that owns the GPU.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from embedserver.errors import InvalidRequest
from embedserver.service.cache import cache_key
from embedserver.service.calls import EmbedCall
from embedserver.tokenization import openai_ids
from embedserver.tokenization.token_ids import TokenIds
from embedserver.tokenization.tokenizer import TextTokenizer

# JSON may carry "\ud800"-style escapes that decode to lone surrogates: not text, and not encodable to UTF-8.
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class ModelInfo:
    """What preparing a request needs to know of a loaded model (sent from the engine to its front-ends)."""

    name: str
    source: str
    revision: str
    pooling: str
    dimension: int
    max_length: int
    query_task: str | None
    tokenizer_path: str
    end_token: str | None
    # The tokenizer file's digest when the engine encodes it through tiktoken: its check need not run again.
    tokenizer_verified: str | None = None
    task: str = "embed"  # "rerank": a reranker, which /v1/embeddings refuses

    def tokenizer(self, *, fast: bool) -> TextTokenizer:
        path = Path(self.tokenizer_path)
        return TextTokenizer(path, end_token=self.end_token, fast=fast, verified=self.tokenizer_verified)


@dataclass(frozen=True)
class PreparedRequest:
    """A request ready for the model: one token-id sequence per distinct input, with its cache key (None for
    token-id inputs, which are not cached)."""

    model: str
    sequences: Sequence[TokenIds]
    keys: list[bytes] | None


def format_query(task: str, text: str) -> str:
    """Qwen3-Embedding's query template, exactly as its model card writes it (no space after "Query:")."""
    return f"Instruct: {task}\nQuery:{text}"


def check_inputs(inputs: list[str] | list[list[int]], max_inputs: int) -> None:
    if not inputs:
        raise InvalidRequest("input must not be empty", param="input")
    if len(inputs) > max_inputs:
        raise InvalidRequest(
            f"{len(inputs)} inputs is more than the limit of {max_inputs} per request", param="input"
        )
    for index, item in enumerate(inputs):
        if isinstance(item, str):
            if not item.strip():
                raise InvalidRequest(f"input[{index}] is empty or whitespace only", param="input")
            check_unicode(item, f"input[{index}]", "input")
        elif not item:
            raise InvalidRequest(f"input[{index}] is an empty token list", param="input")


def read_openai_ids(call: EmbedCall, vocabulary: str) -> EmbedCall:
    """The call with OpenAI's token ids turned into their text, when OPENAI_TOKEN_IDS says they are OpenAI's
    (embedserver/tokenization/openai_ids.py); else as it came. After `check_inputs`: the count is bounded."""
    if not call.openai_ids or vocabulary != "cl100k_base" or isinstance(call.inputs[0], str):
        return call
    texts = [openai_ids.decode(ids, index) for index, ids in enumerate(call.inputs)]  # type: ignore[arg-type]
    check_inputs(texts, len(texts))  # ids of whitespace alone are refused as that text would be
    return replace(call, inputs=texts, openai_ids=False)


def check_unicode(text: str, where: str, param: str) -> None:
    """Refuse an unpaired UTF-16 surrogate (JSON can carry one; the tokenizers cannot encode it)."""
    if _SURROGATE.search(text):
        raise InvalidRequest(
            f"{where} contains an unpaired UTF-16 surrogate, which is not valid Unicode text", param=param
        )


def check_embedding_model(model: ModelInfo) -> None:
    if model.task != "embed":
        raise InvalidRequest(
            f"model {model.name} is a reranker: POST /v1/rerank (or /rerank) serves it, not embeddings",
            param="model",
            code="wrong_model_type",
        )


def check_dimensions(dimensions: int | None, model: ModelInfo) -> None:
    if dimensions is not None and not 1 <= dimensions <= model.dimension:
        raise InvalidRequest(
            f"dimensions must be between 1 and {model.dimension} for model {model.name}, got {dimensions}",
            param="dimensions",
        )


def instruction_for(call: EmbedCall, model: ModelInfo) -> str | None:
    if call.instruction is not None:
        if model.query_task is None:
            raise InvalidRequest(f"model {model.name} does not take instructions", param="instruction")
        if not call.instruction.strip() or _SURROGATE.search(call.instruction):
            raise InvalidRequest(
                "instruction must be non-empty valid Unicode text (no unpaired surrogates)",
                param="instruction",
            )
        return call.instruction
    if call.input_type == "query":
        return model.query_task  # None for models trained without instructions: queries embed as-is
    return None


def text_keys(
    texts: list[str], model: ModelInfo, instruction: str | None, max_length: int, truncate: bool
) -> list[bytes]:
    return [
        cache_key(
            model=model.source,
            revision=model.revision,
            pooling=model.pooling,
            instruction=instruction,
            max_length=max_length,
            truncate=truncate,
            text=text,
        )
        for text in texts
    ]


def distinct(keys: list[bytes]) -> tuple[list[int], list[int]]:
    """For each distinct key the index of its first input, and for every input the position of its key
    among the distinct ones: one forward pass per distinct text, even when a request repeats it."""
    slots: dict[bytes, int] = {}
    firsts: list[int] = []
    positions: list[int] = []
    for index, key in enumerate(keys):
        slot = slots.get(key)
        if slot is None:
            slot = slots[key] = len(firsts)
            firsts.append(index)
        positions.append(slot)
    return firsts, positions


def finish(vectors: np.ndarray, *, dimensions: int | None, normalize: bool) -> np.ndarray:
    """Truncate to the first `dimensions` (Matryoshka), then L2-normalize; the cut must come first, or the
    shortened vector would not have unit norm."""
    out = vectors[:, :dimensions] if dimensions else vectors
    if normalize:
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out = out / np.maximum(norms, 1e-12)
    return np.ascontiguousarray(out, dtype=np.float32)
