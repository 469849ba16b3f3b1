"""Pieces shared by the overload and soak scripts: texts, a POST that tallies answers, the server's resident
memory, and the pass/fail report."""

from __future__ import annotations

import json
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import orjson

WORDS = [
    "embedding", "server", "batch", "model", "token", "query", "passage", "vector", "search", "index",
    "latency", "throughput", "cache", "retrieval", "document", "ranking", "semantic", "cluster", "neural",
    "network", "language", "context", "window", "attention", "layer",
]  # fmt: skip


def texts(n: int, words: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(words)) + f" #{i}" for i in range(n)]


def unique_text(rng: random.Random, words: int, serial: int) -> str:
    """A text no earlier request sent (the serial number), so the cache cannot answer it."""
    return " ".join(rng.choice(WORDS) for _ in range(words)) + f" #{serial}"


@dataclass
class Tally:
    """Answers by status, latencies by status, and client-side failures (timeouts, refused connections)."""

    statuses: Counter[int] = field(default_factory=Counter)
    latencies_ms: dict[int, list[float]] = field(default_factory=dict)
    client_errors: Counter[str] = field(default_factory=Counter)
    texts_ok: int = 0

    def add(self, status: int, ms: float, texts: int) -> None:
        self.statuses[status] += 1
        self.latencies_ms.setdefault(status, []).append(ms)
        if status == 200:
            self.texts_ok += texts

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "client_errors": dict(self.client_errors),
        }
        for status, values in sorted(self.latencies_ms.items()):
            ms = np.array(values)
            out[f"latency_ms_{status}"] = {
                q: round(float(np.percentile(ms, p)), 1) for q, p in (("p50", 50), ("p99", 99), ("max", 100))
            }
        return out


async def post(
    session: Any, url: str, body: dict[str, Any], tally: Tally, texts: int, timeout: float
) -> tuple[int, dict[str, str], bytes] | None:
    """POST `body`, tally the answer; returns (status, headers, body), or None when the client failed."""
    import aiohttp

    started = time.perf_counter()
    try:
        async with session.post(
            url,
            data=orjson.dumps(body),
            headers={"content-type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as response:
            payload = await response.read()
            tally.add(response.status, (time.perf_counter() - started) * 1000, texts)
            return response.status, dict(response.headers), payload
    except TimeoutError:
        tally.client_errors["timeout"] += 1
    except aiohttp.ClientError as exc:
        tally.client_errors[type(exc).__name__] += 1
    return None


def rss_mb(pid: int) -> float:
    import psutil

    return float(psutil.Process(pid).memory_info().rss) / 2**20


def report(result: dict[str, Any], json_path: Path | None) -> NoReturn:
    """Print the result (and write it as JSON when asked); exit 0 if it passed, 1 if not."""
    text = json.dumps(result, indent=2)
    print(text)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(text)
    sys.exit(0 if result["passed"] else 1)
