"""The embedding service: request semantics shared by every API (validation, instructions, cache, batching,
Matryoshka and normalization). Knows nothing of HTTP; returns numpy vectors."""

from __future__ import annotations

import asyncio
import re
import time

import numpy as np

from embedserver.batching.worker import BatchWorker
from embedserver.errors import InvalidRequest, shutting_down
from embedserver.metrics import Metrics
from embedserver.runtime.runner import ModelRunner
from embedserver.service.cache import EmbeddingCache, cache_key
from embedserver.service.calls import EmbedCall, EmbedOutcome
from embedserver.service.registry import LoadedModel, ModelRegistry
from embedserver.settings import Settings

# JSON may carry "\ud800"-style escapes that decode to lone surrogates: not text, and not encodable to UTF-8.
_SURROGATE = re.compile("[\ud800-\udfff]")


def finish(vectors: np.ndarray, *, dimensions: int | None, normalize: bool) -> np.ndarray:
    """Truncate to the first `dimensions` (Matryoshka), then L2-normalize; the cut must come first, or the
    shortened vector would not have unit norm."""
    out = vectors[:, :dimensions] if dimensions else vectors
    if normalize:
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out = out / np.maximum(norms, 1e-12)
    return np.ascontiguousarray(out, dtype=np.float32)


def format_query(task: str, text: str) -> str:
    """Qwen3-Embedding's query template, exactly as its model card writes it (no space after "Query:")."""
    return f"Instruct: {task}\nQuery:{text}"


class EmbeddingService:
    def __init__(
        self, settings: Settings, registry: ModelRegistry, cache: EmbeddingCache, metrics: Metrics
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.cache = cache
        self.metrics = metrics
        self.draining = False  # set on SIGTERM: accepted work finishes, new work is refused

    async def embed(self, call: EmbedCall) -> EmbedOutcome:
        if self.draining:
            raise shutting_down()
        self._check_inputs(call.inputs)
        async with self.registry.acquire(call.model) as model:
            runner, worker = model.runner, model.worker
            if call.dimensions is not None and not 1 <= call.dimensions <= runner.dimension:
                raise InvalidRequest(
                    f"dimensions must be between 1 and {runner.dimension} for model {runner.name}, "
                    f"got {call.dimensions}",
                    param="dimensions",
                )
            with worker.admit(len(call.inputs)):
                raw, tokens, cached = await self._compute(model, call)
        vectors = finish(raw, dimensions=call.dimensions, normalize=call.normalize)
        return EmbedOutcome(model=runner.name, vectors=vectors, tokens=tokens, cached=cached)

    async def _compute(self, model: LoadedModel, call: EmbedCall) -> tuple[np.ndarray, int, list[bool]]:
        runner, worker = model.runner, model.worker
        instruction = self._instruction(call, runner)
        truncate = self.settings.truncate if call.truncate is None else call.truncate
        max_length = min(runner.max_length, self.settings.max_text_length)
        if isinstance(call.inputs[0], str):
            texts = call.inputs
            raw, tokens, cached = await self._embed_texts(model, texts, instruction, max_length, truncate)
        else:
            ids = [
                runner.tokenizer.fit(runner.tokenizer.wrap_ids(seq), max_length, truncate=truncate, index=i)
                for i, seq in enumerate(call.inputs)
            ]
            raw = await self._run(worker, ids)
            tokens, cached = sum(len(s) for s in ids), [False] * len(ids)
        return raw, tokens, cached

    def _check_inputs(self, inputs: list[str] | list[list[int]]) -> None:
        if not inputs:
            raise InvalidRequest("input must not be empty", param="input")
        if len(inputs) > self.settings.max_request_inputs:
            raise InvalidRequest(
                f"{len(inputs)} inputs is more than the limit of {self.settings.max_request_inputs} per request",
                param="input",
            )
        for index, item in enumerate(inputs):
            if isinstance(item, str):
                if not item.strip():
                    raise InvalidRequest(f"input[{index}] is empty or whitespace only", param="input")
                if _SURROGATE.search(item):
                    raise InvalidRequest(
                        f"input[{index}] contains an unpaired UTF-16 surrogate, which is not valid Unicode text",
                        param="input",
                    )
            elif not item:
                raise InvalidRequest(f"input[{index}] is an empty token list", param="input")

    def _instruction(self, call: EmbedCall, runner: ModelRunner) -> str | None:
        if call.instruction is not None:
            if runner.query_task is None:
                raise InvalidRequest(f"model {runner.name} does not take instructions", param="instruction")
            if not call.instruction.strip() or _SURROGATE.search(call.instruction):
                raise InvalidRequest(
                    "instruction must be non-empty valid Unicode text (no unpaired surrogates)",
                    param="instruction",
                )
            return call.instruction
        if call.input_type == "query":
            return runner.query_task  # None for models trained without instructions: queries embed as-is
        return None

    async def _embed_texts(
        self, model: LoadedModel, texts: list[str], instruction: str | None, max_length: int, truncate: bool
    ) -> tuple[np.ndarray, int, list[bool]]:
        runner, worker, tokenize = model.runner, model.worker, model.tokenize
        name = runner.name
        keys = [
            cache_key(
                model=runner.source,
                revision=runner.revision,
                pooling=runner.pooling,
                instruction=instruction,
                max_length=max_length,
                truncate=truncate,
                text=text,
            )
            for text in texts
        ]
        results: dict[bytes, tuple[np.ndarray, int]] = {}
        cached = [False] * len(texts)
        # One forward pass per distinct text, even when a request repeats it; value: (text, first index).
        misses: dict[bytes, tuple[str, int]] = {}
        for index, (key, text) in enumerate(zip(keys, texts, strict=True)):
            hit = self.cache.get(key)
            if hit is not None:
                results[key] = (hit.vector, hit.tokens)
                cached[index] = True
            elif key not in misses:
                misses[key] = (text, index)
        self.metrics.cache_hits.labels(name).inc(sum(cached))
        self.metrics.cache_misses.labels(name).inc(len(misses))
        if misses:
            started = time.perf_counter()
            prompts = [format_query(instruction, t) if instruction else t for t, _ in misses.values()]
            encoded = await tokenize.encode(prompts, idle=not worker.busy)
            self.metrics.tokenize_seconds.labels(name).observe(time.perf_counter() - started)
            sequences = [
                runner.tokenizer.fit(ids, max_length, truncate=truncate, index=index)
                for (_, index), ids in zip(misses.values(), encoded, strict=True)
            ]
            vectors = await self._run(worker, sequences)
            for key, vector, seq in zip(misses, vectors, sequences, strict=True):
                results[key] = (vector, len(seq))
                self.cache.put(key, vector, len(seq))
            self.metrics.cache_entries.set(len(self.cache))
            self.metrics.cache_bytes.set(self.cache.bytes)
        raw = np.stack([results[key][0] for key in keys])
        return raw, sum(results[key][1] for key in keys), cached

    async def _run(self, worker: BatchWorker, sequences: list[list[int]]) -> np.ndarray:
        futures = worker.submit(sequences)
        try:
            # Most requests carry one text: awaiting its future skips gather's task-and-callback set-up.
            vectors = [await futures[0]] if len(futures) == 1 else await asyncio.gather(*futures)
        except BaseException:
            for future in futures:
                future.cancel()  # the worker skips what nobody waits for
            raise
        return np.stack(vectors)
