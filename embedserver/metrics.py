"""Every Prometheus metric of the server, declared once, on a registry owned by the app (so several apps,
as in tests, never collide)."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

# No `*_created` series: one more series per counter and histogram that no dashboard reads.
disable_created_metrics()  # type: ignore[no-untyped-call]

_LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_TOKENS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
_RATIO = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0)

# Series created at 0 when the server starts, so rate() and alerts see them before the first event: the API's
# endpoints with the statuses alerts watch, and every known value of the other labels.
_API_ENDPOINTS = ("/v1/embeddings", "/embed", "/embed_batch", "/v1/rerank", "/rerank")
_WATCHED_STATUSES = ("200", "400", "429", "500", "503")
DISCONNECT_STAGES = ("body", "waiting")
CLOSE_REASONS = ("headers_too_large", "send_timeout", "unsent_bytes")


def observe_many(histogram: Histogram, values: list[float]) -> None:
    """What `histogram.observe(v)` does for each value (the bucket of the first bound >= v, and the sum), at
    the cost of one update per bucket instead of one Python call per value: for the engine's per-request and
    per-text series, whose values arrive by the hundred. Reads prometheus_client's bucket bounds and values;
    tests/test_metrics_many.py checks it against `observe`."""
    if len(values) < 12:  # numpy's set-up (~15 µs) costs more than a dozen observe() calls
        for value in values:
            histogram.observe(value)
        return
    bounds = histogram._upper_bounds
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
    for bucket, count in zip(histogram._buckets, counts.tolist(), strict=True):
        if count:
            bucket.inc(count)
    histogram._sum.inc(float(np.sum(values)))


class HttpMetrics(Protocol):
    """What the HTTP layer records. Metrics records it here; a front-end process forwards it to the engine
    process, so one /metrics shows every process's requests."""

    def request_done(self, endpoint: str, status: int, seconds: float) -> None: ...

    def client_gone(self, stage: str) -> None: ...

    def body_timeout(self) -> None: ...

    def connection_closed(self, reason: str) -> None: ...


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # process_cpu_seconds_total, process_resident_memory_bytes, open fds...: the engine process's own; the
        # front-end processes report theirs (FrontendProcesses).
        ProcessCollector(registry=r)
        self.frontends = FrontendProcesses()
        r.register(self.frontends)
        self.requests = Counter(
            "embedserver_requests_total",
            "HTTP requests by endpoint and status",
            ["endpoint", "status"],
            registry=r,
        )
        # By status too: a fast 429 or 400 must not pull the latency quantiles of answered requests down.
        self.request_seconds = Histogram(
            "embedserver_request_duration_seconds",
            "HTTP request duration",
            ["endpoint", "status"],
            buckets=_LATENCY,
            registry=r,
        )
        self.queue_depth = Gauge(
            "embedserver_queue_depth",
            "Texts waiting for the model (queued, or cut into batches not yet running)",
            ["model"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "embedserver_queue_wait_seconds",
            "Time a text waits before its forward pass starts on the model's thread",
            ["model"],
            buckets=_LATENCY,
            registry=r,
        )
        # HTTP_WORKERS >= 1: the engine's share of a request's server time, from its frame's arrival here to
        # its answer's frame leaving; the rest is the front-end's and the link's.
        self.engine_call_seconds = Histogram(
            "embedserver_engine_call_seconds",
            "Time a front-end's embedding call spends in the engine process (HTTP_WORKERS >= 1)",
            buckets=_LATENCY,
            registry=r,
        )
        self.tokenize_seconds = Histogram(
            "embedserver_tokenization_seconds",
            "Tokenization time per request",
            ["model"],
            buckets=_LATENCY,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "embedserver_inference_seconds",
            "Forward pass + pooling time per batch (overlapped passes, on CUDA: from its launch or the end of the "
            "pass before it, whichever is later, so the sum never exceeds the wall time)",
            ["model"],
            buckets=_LATENCY,
            registry=r,
        )
        self.batch_size = Histogram(
            "embedserver_batch_size", "Texts per forward pass", ["model"], buckets=_SIZES, registry=r
        )
        self.batch_tokens = Histogram(
            "embedserver_batch_tokens",
            "Padded tokens per forward pass",
            ["model"],
            buckets=_TOKENS,
            registry=r,
        )
        # Below MAX_BATCH_TOKENS where passes are slow (CPUs): why a CPU's passes hold few texts under load.
        self.pass_tokens_limit = Gauge(
            "embedserver_pass_tokens_limit",
            "Padded tokens the next forward pass may hold: MAX_BATCH_TOKENS, or what the model computes in "
            "half of MAX_QUEUE_WAIT_S at its recent speed where that is less",
            ["model"],
            registry=r,
        )
        self.padding_ratio = Histogram(
            "embedserver_padding_ratio",
            "Share of a batch's tokens that are padding (shorter texts and filler rows)",
            ["model"],
            buckets=_RATIO,
            registry=r,
        )
        self.batches = Counter("embedserver_batches_total", "Forward passes run", ["model"], registry=r)
        self.batch_failures = Counter(
            "embedserver_batch_failures_total", "Forward passes that raised", ["model"], registry=r
        )
        self.tokens = Counter(
            "embedserver_tokens_total", "Real (unpadded) tokens embedded", ["model"], registry=r
        )
        self.texts = Counter("embedserver_texts_total", "Texts embedded by the model", ["model"], registry=r)
        self.dropped = Counter(
            "embedserver_dropped_total",
            "Queued texts never computed because their caller went away or another text of their request failed",
            ["model"],
            registry=r,
        )
        self.disconnects = Counter(
            "embedserver_client_disconnects_total",
            "Requests whose client went away before the answer (stage: body, waiting)",
            ["stage"],
            registry=r,
        )
        self.timeouts = Counter(
            "embedserver_body_timeouts_total",
            "Requests refused with 408 because the body did not arrive within BODY_TIMEOUT_S",
            registry=r,
        )
        self.connections_closed = Counter(
            "embedserver_connections_closed_total",
            "Connections the server cut (reason: headers_too_large, send_timeout, unsent_bytes)",
            ["reason"],
            registry=r,
        )
        self.expired = Counter(
            "embedserver_expired_total",
            "Queued texts failed with 429 queue_timeout because they waited past MAX_QUEUE_WAIT_S",
            ["model"],
            registry=r,
        )
        self.rejected = Counter(
            "embedserver_rejected_total",
            "Texts refused with 429 because the queue was full",
            ["model"],
            registry=r,
        )
        self.cache_hits = Counter(
            "embedserver_cache_hits_total", "Embedding cache hits", ["model"], registry=r
        )
        self.cache_misses = Counter(
            "embedserver_cache_misses_total", "Embedding cache misses", ["model"], registry=r
        )
        self.cache_entries = Gauge("embedserver_cache_entries", "Embeddings held in the cache", registry=r)
        self.cache_bytes = Gauge("embedserver_cache_bytes", "Bytes of vectors held in the cache", registry=r)
        self.model_loads = Counter(
            "embedserver_model_loads_total", "Model loads by outcome", ["model", "outcome"], registry=r
        )
        self.model_load_seconds = Histogram(
            "embedserver_model_load_seconds",
            "Model load + warm-up time",
            ["model"],
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=r,
        )
        self.worker_restarts = Counter(
            "embedserver_worker_restarts_total", "Batch workers restarted after dying", ["model"], registry=r
        )
        self.model_evictions = Counter(
            "embedserver_model_evictions_total", "Models unloaded to make room", ["model"], registry=r
        )
        self.models_loaded = Gauge("embedserver_models_loaded", "Models currently loaded", registry=r)
        self.ready = Gauge(
            "embedserver_ready",
            "1 while /ready answers 200 (the default model can serve), else 0",
            registry=r,
        )
        self._series: dict[str, ModelSeries] = {}
        for endpoint in _API_ENDPOINTS:
            for status in _WATCHED_STATUSES:
                self.requests.labels(endpoint, status)
        for stage in DISCONNECT_STAGES:
            self.disconnects.labels(stage)
        for reason in CLOSE_REASONS:
            self.connections_closed.labels(reason)

    def for_model(self, model: str) -> ModelSeries:
        """One model's series, looked up once: prometheus_client's `labels()` validates and locks on every
        call, a cost the hot path pays per request and per batch otherwise."""
        series = self._series.get(model)
        if series is None:
            series = self._series[model] = ModelSeries(self, model)
        return series

    def request_done(self, endpoint: str, status: int, seconds: float) -> None:
        code = str(status)
        self.requests.labels(endpoint, code).inc()
        self.request_seconds.labels(endpoint, code).observe(seconds)

    def requests_done(self, endpoint: str, status: int, seconds: list[float]) -> None:
        """`request_done` for many requests of one endpoint and status (a front-end's since its last report)."""
        code = str(status)
        self.requests.labels(endpoint, code).inc(len(seconds))
        observe_many(self.request_seconds.labels(endpoint, code), seconds)

    def client_gone(self, stage: str) -> None:
        self.disconnects.labels(stage).inc()

    def body_timeout(self) -> None:
        self.timeouts.inc()

    def connection_closed(self, reason: str) -> None:
        self.connections_closed.labels(reason).inc()


class ModelSeries:
    """The per-model series of `Metrics`, bound to one model."""

    def __init__(self, m: Metrics, model: str) -> None:
        self.queue_depth = m.queue_depth.labels(model)
        self.queue_wait = m.queue_wait.labels(model)
        self.tokenize_seconds = m.tokenize_seconds.labels(model)
        self.inference_seconds = m.inference_seconds.labels(model)
        self.batch_size = m.batch_size.labels(model)
        self.batch_tokens = m.batch_tokens.labels(model)
        self.pass_tokens_limit = m.pass_tokens_limit.labels(model)
        self.padding_ratio = m.padding_ratio.labels(model)
        self.batches = m.batches.labels(model)
        self.batch_failures = m.batch_failures.labels(model)
        self.tokens = m.tokens.labels(model)
        self.texts = m.texts.labels(model)
        self.dropped = m.dropped.labels(model)
        self.rejected = m.rejected.labels(model)
        self.expired = m.expired.labels(model)
        self.cache_hits = m.cache_hits.labels(model)
        self.cache_misses = m.cache_misses.labels(model)
        # Created at 0 with the model's other series (their events come from the registry).
        for outcome in ("ok", "error"):
            m.model_loads.labels(model, outcome)
        m.worker_restarts.labels(model)
        m.model_evictions.labels(model)


# What a front-end reports, from the same collector that gives the engine's process_* (Linux /proc; nothing
# elsewhere, where the engine's process_* are absent too).
_REPORTED = {
    "process_cpu_seconds_total": "cpu_s",
    "process_resident_memory_bytes": "rss",
    "process_open_fds": "fds",
}


@functools.cache
def _own_process() -> ProcessCollector:
    return ProcessCollector(registry=None)


def own_process_stats() -> dict[str, Any]:
    """This process's CPU seconds, resident memory and open files, as a front-end reports them to the engine."""
    samples = (sample for family in _own_process().collect() for sample in family.samples)
    return {_REPORTED[s.name]: s.value for s in samples if s.name in _REPORTED}


class FrontendProcesses:
    """The latest report of each front-end process (by its index, stable across restarts), exported at scrape
    time: one /metrics shows every process's resources."""

    def __init__(self) -> None:
        self.latest: dict[int, dict[str, Any]] = {}

    def report(self, frontend: int, stats: dict[str, Any]) -> None:
        self.latest[frontend] = stats

    def collect(self) -> Iterator[Metric]:
        cpu = CounterMetricFamily(
            "embedserver_frontend_cpu_seconds", "CPU time of each front-end process", labels=["frontend"]
        )
        rss = GaugeMetricFamily(
            "embedserver_frontend_resident_memory_bytes",
            "Resident memory of each front-end",
            labels=["frontend"],
        )
        fds = GaugeMetricFamily(
            "embedserver_frontend_open_fds", "Open files of each front-end", labels=["frontend"]
        )
        for frontend, stats in sorted(self.latest.items()):
            label = [str(frontend)]
            for family, key in ((cpu, "cpu_s"), (rss, "rss"), (fds, "fds")):
                if key in stats:
                    family.add_metric(label, stats[key])
        yield cpu
        yield rss
        yield fds
