"""Loaded models: load on first use (once, however many requests ask at the same time), keep at most
MAX_MODELS, evict the least recently used one that has no work in flight, and never the default model.

A failed load is remembered with its reason (503 for that model only) and retried after a backoff.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Generator
from concurrent.futures import Executor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, Protocol, cast

from embedserver.backoff import doubling
from embedserver.batching.limits import BatchLimits
from embedserver.batching.worker import BatchWorker
from embedserver.catalog import Catalog, ModelSpec, Task
from embedserver.errors import ModelNotDownloaded, ModelUnavailable
from embedserver.metrics import Metrics
from embedserver.runtime.device_policy import free_memory
from embedserver.runtime.load_steps import MLX_THREAD, LoadSteps, advance
from embedserver.runtime.model_files import ModelFiles
from embedserver.runtime.model_files import ModelNotDownloaded as FilesNotDownloaded
from embedserver.runtime.pooling import Pooling
from embedserver.runtime.runner import ModelRunner
from embedserver.tokenization.batcher import TokenizeBatcher
from embedserver.tokenization.tokenizer import TextTokenizer
from embedserver.tuning.gc_freeze import freeze_long_lived

log = logging.getLogger(__name__)

# Builds a model ready to serve on this device from its files: runs on the MLX thread, or returns the load as
# steps that the registry runs one at a time, other models' passes between them (runtime/load_steps.py):
# embedserver/runtime/loader.py and device_policy.py.
Loader = Callable[[ModelSpec, ModelFiles], "Runner | LoadSteps[Runner]"]
# Finds a model's files, downloading them when the flag allows (runs in a thread of its own, never the MLX
# thread, and returns or fails within a bound): embedserver/runtime/model_files.py.
Fetcher = Callable[[ModelSpec, bool], ModelFiles]
Status = Literal["unloaded", "loading", "ready", "failed"]

_BACKOFF_MIN_S = 1.0
_BACKOFF_MAX_S = 60.0
# A dead batch worker is restarted on its own after this, doubling while it keeps dying within _DEATH_MEMORY_S.
_RESTART_MIN_S = 0.5
_DEATH_MEMORY_S = 300.0


class Runner(Protocol):
    """What the service reads of a loaded model: a ModelRunner, or (MODEL_PROCESS) a model in a process of
    its own, embedserver/server/model_process.py, which also has `passes` (RemotePasses) for the worker,
    `attach` and `aclose`."""

    name: str
    source: str
    revision: str
    tokenizer: TextTokenizer
    pooling: Pooling
    max_length: int
    query_task: str | None
    task: Task
    bucket_rows: bool
    overlap_passes: bool
    split_tokens: int

    @property
    def dimension(self) -> int: ...


@dataclass(eq=False)
class LoadedModel:
    """A model that can serve: its runner, the worker that batches for it, and its tokenization rounds."""

    runner: Runner
    worker: BatchWorker
    tokenize: TokenizeBatcher


@dataclass(eq=False)
class ModelSlot:
    """One catalog model's place in the registry, loaded or not."""

    spec: ModelSpec
    status: Status = "unloaded"
    loaded: LoadedModel | None = None
    error: str | None = None
    leases: int = 0
    last_used: float = 0.0
    failures: int = 0
    retry_at: float = 0.0
    load_task: asyncio.Task[None] | None = None
    worker_deaths: int = 0
    last_death: float = 0.0
    missing: bool = False  # failed because its files are not here and cannot be downloaded

    @property
    def runner(self) -> Runner | None:
        return self.loaded.runner if self.loaded is not None else None

    @property
    def busy(self) -> bool:
        return self.leases > 0 or (self.loaded is not None and self.loaded.worker.busy)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "source": self.spec.source}
        if self.loaded is not None:
            runner, worker = self.loaded.runner, self.loaded.worker
            out |= {"dimension": runner.dimension, "pooling": runner.pooling, "revision": runner.revision}
            if not worker.alive and self.status == "ready":
                out["status"] = "worker_failed"
                out["error"] = worker.failure
        if self.error:
            out["error"] = self.error
        return out


class ModelRegistry:
    def __init__(
        self,
        catalog: Catalog,
        *,
        default: str,
        max_models: int,
        limits: BatchLimits,
        loader: Loader,
        fetch: Fetcher,
        executor: Executor,
        metrics: Metrics,
        tokenize_rounds: int = 1,
        download_on_request: bool = False,
    ) -> None:
        self.catalog = catalog
        self._tokenize_rounds = tokenize_rounds
        self.default = default
        self.max_models = max_models
        self._limits = limits
        self._loader = loader
        self._fetch = fetch
        self._download_on_request = download_on_request
        self._executor = executor
        self._metrics = metrics
        self._slots: dict[str, ModelSlot] = {}
        self._admin = asyncio.Lock()  # loads and evictions happen one at a time
        self._restart_timers: dict[str, asyncio.TimerHandle] = {}
        self._restarts: set[asyncio.Task[None]] = set()

    def slots(self) -> dict[str, ModelSlot]:
        return dict(self._slots)

    @asynccontextmanager
    async def acquire(self, name: str | None) -> AsyncIterator[LoadedModel]:
        """A ready model, held (not evictable) until the block exits. A request loads a model that is not
        loaded, and downloads one only where the operator allows it (DOWNLOAD_ON_REQUEST)."""
        slot = await self._ready(self.resolve(name), download=self._download_on_request)
        assert slot.loaded is not None  # _ready returns only ready slots
        slot.leases += 1
        slot.last_used = time.monotonic()
        try:
            yield slot.loaded
        finally:
            slot.leases -= 1

    def lease_ready(self, name: str | None) -> tuple[ModelSlot, LoadedModel] | None:
        """The model for `name`, held as `acquire` holds it, when it is ready now (else None: use `acquire`,
        which loads it); `release` ends the hold. For callers that cannot wait, on the hot path."""
        slot = self._slots.get(self.resolve(name).name)
        if slot is None or slot.status != "ready" or slot.loaded is None or not slot.loaded.worker.alive:
            return None
        slot.leases += 1
        slot.last_used = time.monotonic()
        return slot, slot.loaded

    def release(self, slot: ModelSlot) -> None:
        slot.leases -= 1

    async def load(self, name: str, *, requested: bool = False) -> ModelSlot:
        """Load `name`. The operator's loads (start-up) download what is missing; a request's (`requested`)
        only where DOWNLOAD_ON_REQUEST allows."""
        download = self._download_on_request or not requested
        return await self._ready(self.resolve(name), download=download)

    def _not_downloaded(self, reason: str) -> ModelNotDownloaded:
        served = sorted(s.spec.name for s in self._slots.values() if s.status == "ready")
        return ModelNotDownloaded(
            f"{reason}; models served now: {', '.join(served) or 'none'}", param="model"
        )

    def resolve(self, name: str | None) -> ModelSpec:
        """The catalog entry a request's model name means: none, or "default", is the model this server
        serves by default (the fallback, when it took over)."""
        if name is None or name.strip().lower() == "default":
            return self.catalog.resolve(self.default)
        return self.catalog.resolve(name)

    async def _ready(self, spec: ModelSpec, *, download: bool) -> ModelSlot:
        while True:
            slot = self._slots.setdefault(spec.name, ModelSlot(spec))
            if slot.status == "ready" and slot.loaded is not None and slot.loaded.worker.alive:
                return slot
            if slot.load_task is None:
                if slot.status == "failed" and time.monotonic() < slot.retry_at:
                    # Not in the cache with the hub out of reach: a 404 clients do not retry, not a 503.
                    raise self._not_downloaded(slot.error or "") if slot.missing else _unavailable(slot)
                slot.status = "loading"
                slot.load_task = asyncio.create_task(self._load(slot, download), name=f"load-{spec.name}")
                # Waiters that give up leave its outcome unread: read here, so it is never logged as lost.
                slot.load_task.add_done_callback(lambda t: t.cancelled() or t.exception())
            # shield: one caller giving up must not cancel the load that others wait for.
            await asyncio.shield(slot.load_task)

    async def _load(self, slot: ModelSlot, download: bool) -> None:
        name = slot.spec.name
        loop = asyncio.get_running_loop()
        try:
            files = None
            if slot.loaded is None:
                # Off the MLX thread and outside the admin lock: a slow download stalls neither the models that
                # serve nor the loads of others.
                try:
                    files = await loop.run_in_executor(None, self._fetch, slot.spec, download)
                except FilesNotDownloaded as exc:
                    if exc.reachable:
                        slot.status = "unloaded"  # the operator may download it: nothing to back off from
                    else:  # no retry will find it until someone puts it in the cache
                        slot.status, slot.error, slot.missing = "failed", str(exc), True
                        slot.failures += 1
                        slot.retry_at = time.monotonic() + doubling(
                            _BACKOFF_MIN_S, slot.failures, _BACKOFF_MAX_S
                        )
                    raise self._not_downloaded(str(exc)) from None
            async with self._admin:
                started = time.perf_counter()
                if slot.loaded is not None:  # its worker died: replace the worker, keep the weights
                    runner = slot.loaded.runner
                    await slot.loaded.worker.stop()
                else:
                    try:
                        await self._make_room(slot)
                    except ModelUnavailable:
                        slot.status = "unloaded"  # no room right now: not a failure of the model itself
                        raise
                    assert files is not None
                    log.info("loading model %s from %s", name, files.directory)
                    runner = await self._run_loader(slot.spec, files)
                worker = self._worker(name, runner)
                worker.on_death = lambda: self._worker_died(slot)
                attach = getattr(runner, "attach", None)
                if attach is not None:  # a model in a process of its own: hear of its exit even while idle
                    await attach(partial(self._process_exited, slot, runner))
                worker.start()
                tokenize = TokenizeBatcher(runner.tokenizer, rounds=self._tokenize_rounds)
                slot.loaded = LoadedModel(runner, worker, tokenize)
                slot.status, slot.error, slot.failures, slot.missing = "ready", None, 0, False
                self._metrics.model_loads.labels(name, "ok").inc()
                self._metrics.model_load_seconds.labels(name).observe(time.perf_counter() - started)
                self._metrics.models_loaded.set(self._loaded_count())
                log.info(
                    "model %s ready (dim %d) in %.1fs", name, runner.dimension, time.perf_counter() - started
                )
                freeze_long_lived()  # the model's Python objects live as long as it is loaded
        except (ModelUnavailable, ModelNotDownloaded):
            raise
        except Exception as exc:
            slot.failures += 1
            slot.status, slot.error, slot.loaded = "failed", _reason(exc), None
            slot.retry_at = time.monotonic() + doubling(_BACKOFF_MIN_S, slot.failures, _BACKOFF_MAX_S)
            self._metrics.model_loads.labels(name, "error").inc()
            log.error("model %s failed to load: %s", name, slot.error)
            raise _unavailable(slot) from exc
        finally:
            slot.load_task = None

    async def _run_loader(self, spec: ModelSpec, files: ModelFiles) -> Runner:
        """The loader's runner; a load in steps one step a call on the MLX thread (or, where a step says so,
        in the default pool), so passes that other models queue meanwhile run between two steps."""
        loop = asyncio.get_running_loop()
        made = await loop.run_in_executor(self._executor, self._loader, spec, files)
        if not isinstance(made, Generator):
            return made
        executor: Executor | None = self._executor
        while True:  # cancelled (shutdown), the rest of the steps never run
            done, value = await loop.run_in_executor(executor, advance, made)
            if done:
                return cast("Runner", value)
            executor = self._executor if value is MLX_THREAD else None

    def _worker(self, name: str, runner: Runner) -> BatchWorker:
        passes = getattr(runner, "passes", None)  # MODEL_PROCESS: the model's own process runs the passes
        embed = runner.embed if isinstance(runner, ModelRunner) else None
        launch = runner.launch if isinstance(runner, ModelRunner) and runner.overlap_passes else None
        return BatchWorker(
            name,
            embed,
            limits=self._limits,
            metrics=self._metrics,
            executor=self._executor,
            bucketed_rows=runner.bucket_rows,
            launch=launch,
            passes=passes,
            split_tokens=runner.split_tokens,
        )

    def _process_exited(self, slot: ModelSlot, runner: Runner) -> None:
        """A model's process went away unasked: unload the model at once (what waits for it fails with 503),
        then load it again in a new process after a short backoff, as a dead worker is restarted, without
        waiting for a request (a replica whose default model died must become ready again on its own). A
        request in the meantime loads it sooner."""
        if slot.loaded is None or slot.loaded.runner is not runner:
            return
        delay = self._backoff_after_death(slot)
        log.warning("the process of model %s died; loading it again in %.1fs", slot.spec.name, delay)

        async def reload() -> None:
            async with self._admin:
                if slot.loaded is None or slot.loaded.runner is not runner:
                    return
                await self._unload(slot)
            await asyncio.sleep(delay)
            if slot.loaded is None and slot.load_task is None:  # else a request loaded it first
                await self._load_again(slot)

        self._in_background(reload(), f"reload-{slot.spec.name}")

    async def _load_again(self, slot: ModelSlot) -> None:
        """Load a model again after a part of it died (its files are here: it was loaded); a restart."""
        try:
            await self._ready(slot.spec, download=False)
            self._metrics.worker_restarts.labels(slot.spec.name).inc()
        except ModelUnavailable as exc:
            log.error("loading model %s again failed: %s", slot.spec.name, exc.message)

    def _in_background(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """Run `work` as a task the registry holds, and cancels on close."""
        task = asyncio.create_task(work, name=name)
        self._restarts.add(task)
        task.add_done_callback(self._restarts.discard)

    async def _unload(self, slot: ModelSlot) -> None:
        """Stop a loaded model's worker, then its process if it has one."""
        assert slot.loaded is not None
        runner = slot.loaded.runner
        await slot.loaded.worker.stop()
        slot.loaded, slot.status = None, "unloaded"
        self._metrics.models_loaded.set(self._loaded_count())
        close = getattr(runner, "aclose", None)
        if close is not None:
            await close()

    def _backoff_after_death(self, slot: ModelSlot) -> float:
        """How long to wait before restarting what died: doubling while deaths follow each other."""
        now = time.monotonic()
        slot.worker_deaths = slot.worker_deaths + 1 if now - slot.last_death < _DEATH_MEMORY_S else 1
        slot.last_death = now
        return doubling(_RESTART_MIN_S, slot.worker_deaths, _BACKOFF_MAX_S)

    def _worker_died(self, slot: ModelSlot) -> None:
        """Restart a dead worker after a short backoff, without waiting for a request to ask for it."""
        delay = self._backoff_after_death(slot)
        log.warning("worker for %s died; restarting it in %.1fs", slot.spec.name, delay)
        timer = asyncio.get_running_loop().call_later(delay, self._restart, slot)
        self._restart_timers[slot.spec.name] = timer

    def _restart(self, slot: ModelSlot) -> None:
        self._restart_timers.pop(slot.spec.name, None)
        if slot.status != "ready" or slot.loaded is None or slot.loaded.worker.alive:
            return  # evicted, or a request restarted it first

        self._in_background(self._load_again(slot), f"restart-{slot.spec.name}")

    def _loaded_count(self) -> int:
        return sum(1 for s in self._slots.values() if s.loaded is not None)

    async def _make_room(self, incoming: ModelSlot) -> None:
        while self._loaded_count() >= self.max_models:
            candidates = [
                s
                for s in self._slots.values()
                if s is not incoming and s.loaded is not None and s.spec.name != self.default and not s.busy
            ]
            if not candidates:
                raise ModelUnavailable(
                    f"all {self.max_models} model slots hold models in use (MAX_MODELS); retry shortly",
                    headers={"Retry-After": "5"},
                )
            await self._evict(min(candidates, key=lambda s: s.last_used))

    async def _evict(self, slot: ModelSlot) -> None:
        log.info("evicting model %s (least recently used)", slot.spec.name)
        if slot.loaded is not None:
            await self._unload(slot)
        slot.status = "unloaded"
        self._metrics.model_evictions.labels(slot.spec.name).inc()
        await asyncio.get_running_loop().run_in_executor(self._executor, free_memory)

    async def close(self) -> None:
        for timer in self._restart_timers.values():
            timer.cancel()
        for task in self._restarts:
            task.cancel()
        for slot in self._slots.values():
            if slot.load_task is not None:
                slot.load_task.cancel()
            if slot.loaded is not None:
                await self._unload(slot)


def _reason(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return str(message)


def _unavailable(slot: ModelSlot) -> ModelUnavailable:
    retry = max(1, int(slot.retry_at - time.monotonic()))
    return ModelUnavailable(
        f"model {slot.spec.name} is unavailable: {slot.error}",
        param="model",
        headers={"Retry-After": str(retry)},
    )
