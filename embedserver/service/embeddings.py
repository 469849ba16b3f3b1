"""The embedding service in the process that owns the model: the cache, admission and batching around the
request semantics of requests.py. Knows nothing of HTTP; returns numpy vectors.

`embed` serves a whole call (one process, or nothing to prepare elsewhere); `describe`, `start_prepared` and
`embed_prepared` serve front-end processes, which validate and tokenize on their side and send token ids with cache keys.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np

from embedserver.errors import shutting_down
from embedserver.metrics import Metrics
from embedserver.service import reranking
from embedserver.service.cache import EmbeddingCache
from embedserver.service.calls import EmbedCall, EmbedOutcome, RerankCall, RerankOutcome
from embedserver.service.registry import LoadedModel, ModelRegistry, Runner
from embedserver.service.requests import (
    ModelInfo,
    PreparedRequest,
    check_dimensions,
    check_embedding_model,
    check_inputs,
    distinct,
    finish,
    format_query,
    instruction_for,
    read_openai_ids,
    text_keys,
)
from embedserver.settings import Settings

# How a started request is answered: its raw vectors and which came from the cache, or its error.
Answer = Callable[[tuple[np.ndarray, list[bool]] | BaseException], None]


class Cancellable(Protocol):
    def cancel(self) -> object: ...


def model_info(runner: Runner) -> ModelInfo:
    tokenizer = runner.tokenizer
    return ModelInfo(
        name=runner.name,
        source=runner.source,
        revision=runner.revision,
        pooling=runner.pooling,
        dimension=runner.dimension,
        max_length=runner.max_length,
        query_task=runner.query_task,
        tokenizer_path=str(tokenizer.path),
        end_token=tokenizer.end_token,
        tokenizer_verified=tokenizer.fast_digest,
        task=runner.task,
    )


class EmbeddingService:
    def __init__(
        self, settings: Settings, registry: ModelRegistry, cache: EmbeddingCache, metrics: Metrics
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.cache = cache
        self.metrics = metrics
        # Read when /metrics is scraped, not written per request.
        metrics.cache_entries.set_function(lambda: len(cache))
        metrics.cache_bytes.set_function(lambda: cache.bytes)
        self.draining = False  # set on SIGTERM: accepted work finishes, new work is refused

    async def embed(self, call: EmbedCall) -> EmbedOutcome:
        if self.draining:
            raise shutting_down()
        check_inputs(call.inputs, self.settings.max_request_inputs)
        call = read_openai_ids(call, self.settings.openai_token_ids)
        async with self.registry.acquire(call.model) as model:
            info = model_info(model.runner)
            check_embedding_model(info)
            check_dimensions(call.dimensions, info)
            with model.worker.admit(len(call.inputs)):
                raw, tokens, cached = await self._compute(model, info, call)
        vectors = finish(raw, dimensions=call.dimensions, normalize=call.normalize)
        return EmbedOutcome(model=info.name, vectors=vectors, tokens=tokens, cached=cached)

    async def rerank(self, call: RerankCall) -> RerankOutcome:
        if self.draining:
            raise shutting_down()
        return await reranking.rerank(self, call, self.settings.rerank_model or "rerank-small")

    async def describe(self, name: str | None) -> ModelInfo:
        """The model a request naming `name` gets (the default for None), loaded if it was not."""
        async with self.registry.acquire(name) as model:
            return model_info(model.runner)

    def start_prepared(self, request: PreparedRequest, answer: Answer) -> Cancellable | None:
        """Start a front-end's prepared request on its model when the model is ready (None when it is not:
        `embed_prepared` waits for it). `answer` is called once, from the event loop, with the raw pooled
        vectors (one per sequence) and which came from the cache, or with the request's APIError; the returned
        handle's `cancel()` drops the request (its queued texts are not computed, and `answer` is not called).
        Under load this is the engine's whole cost per request: the cache lookups, one queue entry, and one
        callback when the texts are done. Not refused while draining: the front-end accepted the request before
        its own drain began (it refuses new ones itself), and accepted requests finish."""
        held = self.registry.lease_ready(request.model)
        if held is None:
            return None
        slot, model = held
        worker, sequences, keys = model.worker, request.sequences, request.keys
        count = len(sequences)
        try:
            worker.reserve(count)
        except BaseException:
            self.registry.release(slot)
            raise
        # The cache's vector per text; None when there are no keys to look up or every lookup missed.
        found: list[np.ndarray | None] | None = None
        misses = count
        if keys is not None:
            cached = self._cached
            found = [cached(key) for key in keys]
            misses = sum(vector is None for vector in found)
            series = self.metrics.for_model(model.runner.name)
            if misses < count:
                series.cache_hits.inc(count - misses)
            if misses:
                series.cache_misses.inc(misses)
            if misses == count:
                found = None

        def finished() -> None:
            worker.release(count)
            self.registry.release(slot)

        if not misses:  # every text from the cache
            finished()
            raw = np.stack(found)  # type: ignore[arg-type]
            return asyncio.get_running_loop().call_soon(answer, (raw, [True] * count))
        missing = range(count) if found is None else [i for i, vector in enumerate(found) if vector is None]
        try:
            computing = worker.submit(sequences if found is None else [sequences[i] for i in missing])
        except BaseException:
            finished()
            raise

        def computed(done: asyncio.Future[np.ndarray]) -> None:
            finished()
            if done.cancelled():
                return  # the caller left: nobody to answer
            failure = done.exception()
            if failure is not None:
                answer(failure)
                return
            vectors = done.result()
            if keys is not None:
                put = self.cache.put
                for row, i in enumerate(missing):
                    put(keys[i], vectors[row], len(sequences[i]))
            if found is None:
                answer((vectors, [False] * count))
                return
            merged = list(found)
            for row, i in enumerate(missing):
                merged[i] = vectors[row]
            answer((np.stack(merged), [vector is not None for vector in found]))  # type: ignore[arg-type]

        computing.add_done_callback(computed)
        return computing

    async def embed_prepared(self, request: PreparedRequest) -> tuple[np.ndarray, list[bool]]:
        """`start_prepared`'s answer, after waiting for the model to load when it is not ready."""
        loop = asyncio.get_running_loop()
        result: asyncio.Future[tuple[np.ndarray, list[bool]]] = loop.create_future()

        def answer(outcome: tuple[np.ndarray, list[bool]] | BaseException) -> None:
            if result.done():
                return
            if isinstance(outcome, BaseException):
                result.set_exception(outcome)
            else:
                result.set_result(outcome)

        while (started := self.start_prepared(request, answer)) is None:
            await self.registry.load(request.model, requested=True)  # raises when the model cannot be had
        try:
            return await result
        except asyncio.CancelledError:
            started.cancel()
            raise

    async def _compute(
        self, model: LoadedModel, info: ModelInfo, call: EmbedCall
    ) -> tuple[np.ndarray, int, list[bool]]:
        runner, worker = model.runner, model.worker
        instruction = instruction_for(call, info)
        truncate = self.settings.truncate if call.truncate is None else call.truncate
        max_length = min(info.max_length, self.settings.max_text_length)
        if isinstance(call.inputs[0], str):
            texts = call.inputs
            return await self._embed_texts(model, info, texts, instruction, max_length, truncate)  # type: ignore[arg-type]
        ids = [
            runner.tokenizer.fit(runner.tokenizer.wrap_ids(seq), max_length, truncate=truncate, index=i)
            for i, seq in enumerate(call.inputs)  # type: ignore[arg-type]
        ]
        raw = await worker.compute(ids)
        return raw, sum(len(s) for s in ids), [False] * len(ids)

    async def _embed_texts(
        self,
        model: LoadedModel,
        info: ModelInfo,
        texts: list[str],
        instruction: str | None,
        max_length: int,
        truncate: bool,
    ) -> tuple[np.ndarray, int, list[bool]]:
        runner, worker, tokenize = model.runner, model.worker, model.tokenize
        keys = text_keys(texts, info, instruction, max_length, truncate)
        firsts, positions = distinct(keys)
        # Cache hits are answered before tokenization: only the misses are encoded.
        hits = {i: self.cache.get(keys[i]) for i in firsts}
        misses = [i for i in firsts if hits[i] is None]
        sequences: dict[int, list[int]] = {}
        if misses:
            started = time.perf_counter()
            prompts = [format_query(instruction, texts[i]) if instruction else texts[i] for i in misses]
            encoded = await tokenize.encode(prompts, idle=not worker.busy)
            self.metrics.for_model(runner.name).tokenize_seconds.observe(time.perf_counter() - started)
            for i, ids in zip(misses, encoded, strict=True):
                sequences[i] = runner.tokenizer.fit(ids, max_length, truncate=truncate, index=i)
        known: list[np.ndarray | None] = []
        lengths: list[int] = []
        for i in firsts:
            hit = hits[i]
            known.append(hit.vector if hit is not None else None)
            lengths.append(hit.tokens if hit is not None else len(sequences[i]))
        raw, cached = await self._cached_or_run(
            model, [keys[i] for i in firsts], [sequences.get(i, []) for i in firsts], known=known
        )
        rows = np.asarray(positions)
        return raw[rows], sum(lengths[p] for p in positions), [cached[p] for p in positions]

    async def _cached_or_run(
        self,
        model: LoadedModel,
        keys: list[bytes],
        sequences: list[list[int]],
        known: list[np.ndarray | None] | None = None,
    ) -> tuple[np.ndarray, list[bool]]:
        """One vector per distinct key: from the cache where it holds it (or `known`, looked up already), else
        from the model, then cached."""
        name = model.runner.name
        found = known if known is not None else [self._cached(key) for key in keys]
        misses = [i for i, vector in enumerate(found) if vector is None]
        self.metrics.for_model(name).cache_hits.inc(len(keys) - len(misses))
        self.metrics.for_model(name).cache_misses.inc(len(misses))
        vectors: list[np.ndarray | None] = list(found)
        if misses:
            computed = await model.worker.compute([sequences[i] for i in misses])
            for i, vector in zip(misses, computed, strict=True):
                vectors[i] = vector
                self.cache.put(keys[i], vector, len(sequences[i]))
        return np.stack(vectors), [vector is not None for vector in found]  # type: ignore[arg-type]

    def _cached(self, key: bytes) -> np.ndarray | None:
        hit = self.cache.get(key)
        return hit.vector if hit is not None else None
