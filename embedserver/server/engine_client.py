"""A front-end process's side of the link to the engine: the connection (`EngineClient`), the Embedder the
routes call (`RemoteService`), and the HTTP metrics the engine records for it (`ForwardedMetrics`).

`RemoteService` gives the same answers and errors as the engine's EmbeddingService, but does the request's
per-text work here: validation, instructions, tokenization with the model's own tokenizer, truncation, cache
keys, and Matryoshka truncation and normalization of what comes back. The engine gets token ids and keys in
one binary buffer and answers with raw vectors in another, so its own work per request stays small whatever
the texts, and tokenization spreads over the front-end processes. No MLX here.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import numpy as np

from embedserver import errors
from embedserver.server import ipc
from embedserver.service.calls import EmbedCall, EmbedOutcome
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
from embedserver.tokenization.batcher import TokenizeBatcher
from embedserver.tokenization.tokenizer import TextTokenizer

# An answer from the engine: its kind, meta and payload (vectors as a view of the frame that carried them).
Answer = tuple[int, Any, bytes | memoryview]

# HTTP metrics leave for the engine at most this often, many events to a frame.
_RECORD_EVERY_S = 0.05


def engine_gone() -> errors.ModelUnavailable:
    return errors.ModelUnavailable("the engine process went away", code="engine_unavailable")


class EngineClient(ipc.FrameProtocol):
    """This front-end's connection to the engine process; calls are matched to answers by id."""

    def __init__(self) -> None:
        super().__init__()
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Answer]] = {}
        # EMBED calls of this loop turn, by id, sent as one EMBEDS frame at its end.
        self._embeds: dict[int, tuple[Any, bytes]] = {}
        self.lost = asyncio.Event()

    def frame_received(self, kind: int, id_: int, meta: Any, payload: bytes) -> None:
        if kind == ipc.RESULTS:
            for answer_id, answer, vectors in ipc.split_results(meta, payload):
                self._answered(answer_id, ipc.RESULT, answer, vectors)
        else:
            self._answered(id_, kind, meta, payload)

    def _send_embeds(self) -> None:
        calls, self._embeds = self._embeds, {}
        if calls:
            self.send(ipc.EMBEDS, 0, *ipc.pack_embeds([(id_, *call) for id_, call in calls.items()]))

    def _answered(self, id_: int, kind: int, meta: Any, payload: bytes | memoryview) -> None:
        future = self._waiting.pop(id_, None)
        if future is not None and not future.done():
            future.set_result((kind, meta, payload))

    def connection_lost(self, exc: Exception | None) -> None:
        gone = engine_gone()
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(gone)
        self._waiting.clear()
        self.lost.set()

    async def call(self, kind: int, meta: Any, payload: bytes = b"") -> Answer:
        """The engine's answer; an ERROR answer is raised as the APIError it was there."""
        if self.lost.is_set():
            raise engine_gone()
        id_ = next(self._ids)
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._waiting[id_] = future
        if kind == ipc.EMBED:
            if not self._embeds:
                asyncio.get_running_loop().call_soon(self._send_embeds)
            self._embeds[id_] = (meta, payload)
        else:
            self.send(kind, id_, meta, payload)
        try:
            answer = await future
        except asyncio.CancelledError:
            if self._waiting.pop(id_, None) is not None and self._embeds.pop(id_, None) is None:
                self.send(ipc.CANCEL, id_, None)  # the engine drops this call's queued texts
            raise
        if answer[0] == ipc.ERROR:
            raise ipc.rebuild_error(answer[1])
        return answer


class RemoteService:
    """The Embedder of a front-end process: the same calls and errors as EmbeddingService, the model remote."""

    def __init__(
        self, client: EngineClient, settings: Settings, metrics: ForwardedMetrics | None = None
    ) -> None:
        self.client = client
        self.settings = settings
        self.metrics = metrics  # where tokenization times go (the engine records them)
        self.draining = False
        self._infos: dict[str | None, ModelInfo] = {}  # by the name a request gave (None: the default)
        self._tokenizers: dict[str, tuple[TextTokenizer, TokenizeBatcher]] = {}  # by the model's own name
        self._pending: dict[str | None, asyncio.Task[ModelInfo]] = {}

    async def embed(self, call: EmbedCall) -> EmbedOutcome:
        if self.draining:
            raise errors.shutting_down()
        settings = self.settings
        check_inputs(call.inputs, settings.max_request_inputs)
        call = read_openai_ids(call, settings.openai_token_ids)
        info = await self.model(call.model)
        check_embedding_model(info)
        check_dimensions(call.dimensions, info)
        tokenizer, rounds = self._tokenizers[info.name]
        instruction = instruction_for(call, info)
        truncate = settings.truncate if call.truncate is None else call.truncate
        max_length = min(info.max_length, settings.max_text_length)
        started = time.perf_counter()
        keys: list[bytes] | None = None
        if isinstance(call.inputs[0], str):
            texts: list[str] = call.inputs  # type: ignore[assignment]
            all_keys = text_keys(texts, info, instruction, max_length, truncate)
            firsts, positions = distinct(all_keys)
            prompts = [format_query(instruction, texts[i]) if instruction else texts[i] for i in firsts]
            encoded = await rounds.encode(prompts, idle=True)
            sequences = [
                tokenizer.fit(ids, max_length, truncate=truncate, index=i)
                for i, ids in zip(firsts, encoded, strict=True)
            ]
            keys = [all_keys[i] for i in firsts]
            if self.metrics is not None:
                self.metrics.tokenized(info.name, time.perf_counter() - started)
        else:
            sequences = [
                tokenizer.fit(tokenizer.wrap_ids(seq), max_length, truncate=truncate, index=i)
                for i, seq in enumerate(call.inputs)  # type: ignore[arg-type]
            ]
            positions = list(range(len(sequences)))
        request = PreparedRequest(info.name, sequences, keys)
        meta, payload = ipc.pack_request(request)
        _, answer, vectors = await self.client.call(ipc.EMBED, meta, payload)
        raw = np.frombuffer(vectors, dtype=np.float32).reshape(answer["shape"])
        rows = np.asarray(positions)
        return EmbedOutcome(
            model=info.name,
            vectors=finish(raw[rows], dimensions=call.dimensions, normalize=call.normalize),
            tokens=sum(len(sequences[p]) for p in positions),
            cached=[answer["cached"][p] for p in positions],
        )

    async def model(self, name: str | None) -> ModelInfo:
        """What the engine serves under `name`, with its tokenizer loaded here (once per model)."""
        info = self._infos.get(name)
        if info is not None:
            return info
        pending = self._pending.get(name)
        if pending is None:
            pending = self._pending[name] = asyncio.create_task(self._describe(name))
            pending.add_done_callback(lambda _: self._pending.pop(name, None))
        # shield: one caller giving up must not cancel what the others wait for.
        return await asyncio.shield(pending)

    async def _describe(self, name: str | None) -> ModelInfo:
        _, meta, _ = await self.client.call(ipc.DESCRIBE, {"model": name})
        info = ModelInfo(**meta)
        if info.name not in self._tokenizers:
            # Off the event loop: checking the fast tokenizer against `tokenizers` takes a moment.
            fast = self.settings.fast_tokenizer
            tokenizer = await asyncio.to_thread(info.tokenizer, fast=fast)
            rounds = TokenizeBatcher(tokenizer, rounds=self.settings.tokenizer_rounds)
            self._tokenizers[info.name] = (tokenizer, rounds)
        self._infos[name] = info
        return info


class ForwardedMetrics:
    """HttpMetrics that the engine process records (one /metrics for all processes), sent in batches."""

    def __init__(self, client: EngineClient) -> None:
        self.client = client
        self._events: list[dict[str, Any]] = []
        # Durations since the last report, by series (the event and its labels): one event per series, not
        # per request, so the engine records a report in a few updates.
        self._durations: dict[tuple[str, tuple[tuple[str, Any], ...]], list[float]] = {}

    def request_done(self, endpoint: str, status: int, seconds: float) -> None:
        self._duration("requests", (("endpoint", endpoint), ("status", status)), seconds)

    def tokenized(self, model: str, seconds: float) -> None:
        """How long a request's texts took to prepare here (the engine's embedserver_tokenization_seconds)."""
        self._duration("tokenized", (("model", model),), seconds)

    def _duration(self, event: str, labels: tuple[tuple[str, Any], ...], seconds: float) -> None:
        durations = self._durations.get((event, labels))
        if durations is None:
            self._report_soon()
            durations = self._durations[(event, labels)] = []
        durations.append(seconds)

    def client_gone(self, stage: str) -> None:
        self._add({"event": "gone", "stage": stage})

    def body_timeout(self) -> None:
        self._add({"event": "body_timeout"})

    def connection_closed(self, reason: str) -> None:
        self._add({"event": "closed", "reason": reason})

    def process(self, frontend: int, stats: dict[str, Any]) -> None:
        self._add({"event": "process", "frontend": frontend, "stats": stats})

    def _add(self, event: dict[str, Any]) -> None:
        self._report_soon()
        self._events.append(event)

    def _report_soon(self) -> None:
        """The first record since the last report sets the next one going."""
        if not self._events and not self._durations:
            asyncio.get_running_loop().call_later(_RECORD_EVERY_S, self.flush)

    def flush(self) -> None:
        events, self._events = self._events, []
        durations, self._durations = self._durations, {}
        events.extend(
            {"event": event, **dict(labels), "seconds": seconds}
            for (event, labels), seconds in durations.items()
        )
        if events:
            self.client.send(ipc.RECORD, 0, events)
