"""Locust load test: a realistic mix against a running embedserver (loopback only).

    make loadtest                      # headless, 32 users, 60 s, against http://127.0.0.1:8000
    locust -f benchmarks/locustfile.py --host http://127.0.0.1:8000 --headless -u 64 -r 8 -t 2m

The mix: short queries (OpenAI API, with instructions), 128-512-token passages (native API), and batch
requests of 16-64 texts. Any 5xx fails the run (exit status 1). At the end /metrics is scraped and the
batch-size and queue-wait histograms are summarized.
"""

from __future__ import annotations

import random
import re
from typing import Any

from locust import HttpUser, between, events, task

WORDS = [
    "embedding",
    "server",
    "batch",
    "model",
    "token",
    "query",
    "passage",
    "vector",
    "search",
    "index",
    "latency",
    "throughput",
    "cache",
    "metal",
    "cuda",
    "retrieval",
    "document",
    "ranking",
    "semantic",
    "cluster",
    "neural",
    "network",
    "language",
    "context",
    "window",
    "attention",
    "layer",
]
_rng = random.Random(0)


def _text(words: int) -> str:
    return " ".join(_rng.choice(WORDS) for _ in range(words))


class EmbeddingUser(HttpUser):
    wait_time = between(0.0, 0.05)

    @task(6)
    def short_query(self) -> None:
        self._post("/v1/embeddings", {"input": _text(_rng.randint(4, 16)), "input_type": "query"})

    @task(3)
    def passage(self) -> None:
        self._post("/embed", {"text": _text(_rng.randint(100, 400))})

    @task(1)
    def batch(self) -> None:
        texts = [_text(_rng.randint(20, 120)) for _ in range(_rng.randint(16, 64))]
        if _rng.random() < 0.5:
            self._post("/v1/embeddings", {"input": texts, "encoding_format": "base64"})
        else:
            self._post("/embed_batch", {"texts": texts})

    def _post(self, path: str, body: dict[str, Any]) -> None:
        with self.client.post(path, json=body, catch_response=True) as response:
            if response.status_code >= 500:
                response.failure(f"{response.status_code}: {response.text[:200]}")
            elif response.status_code != 200:
                response.failure(f"unexpected {response.status_code}")


@events.quitting.add_listener
def _summarize(environment: Any, **_: Any) -> None:
    stats = environment.stats
    server_errors = sum(
        count for (_, _, error), count in _errors(stats).items() if re.match(r"^5\d\d", str(error))
    )
    if server_errors or stats.total.num_failures:
        environment.process_exit_code = 1
    host = environment.host or "http://127.0.0.1:8000"
    try:
        import urllib.request

        with urllib.request.urlopen(f"{host}/metrics", timeout=5) as r:
            _print_histograms(r.read().decode())
    except OSError as exc:
        print(f"could not scrape {host}/metrics: {exc}")


def _errors(stats: Any) -> dict[tuple[str, str, str], int]:
    return {(e.method, e.name, e.error): e.occurrences for e in stats.errors.values()}


def _print_histograms(metrics: str) -> None:
    for name in ("embedserver_batch_size", "embedserver_queue_wait_seconds"):
        buckets = re.findall(rf'^{name}_bucket{{le="([^"]+)",model="([^"]+)"}} (\S+)$', metrics, re.M)
        total = re.findall(rf'^{name}_sum{{model="([^"]+)"}} (\S+)$', metrics, re.M)
        count = re.findall(rf'^{name}_count{{model="([^"]+)"}} (\S+)$', metrics, re.M)
        for (model, s), (_, c) in zip(total, count, strict=False):
            n = float(c)
            mean = float(s) / n if n else 0.0
            cumulative = [(le, float(v)) for le, m, v in buckets if m == model]
            p50 = next((le for le, v in cumulative if v >= n / 2), "+Inf")
            p99 = next((le for le, v in cumulative if v >= n * 0.99), "+Inf")
            print(f"{name} [{model}]: n={n:.0f} mean={mean:.4g} p50<={p50} p99<={p99}")
