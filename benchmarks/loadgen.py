"""HTTP load generator: C concurrent clients, each sending one request at a time, spread over worker
processes so the client side is not the bottleneck. Used by the benchmarks; loopback only. The clients share
the machine with the server they measure, so they read each answer with orjson (PARSERS): their CPU is the
server's loss.

Each process gets its own share of the bodies and each client its own stride through that share, so no body
is sent twice until a share runs out (`repeats` counts what was sent again): with bodies of unique texts, the
server's cache never answers.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

# How the clients read each answer. A 1,024-float JSON answer takes the standard library's parser ~195 µs and
# orjson ~23 (2-core VM); at 10,000 answers a second that is two cores of the machine the server runs on, and
# the load generator then slows the server it measures. "json" keeps the slower parser for comparison.
PARSERS: dict[str, Callable[[bytes], Any]] = {"orjson": orjson.loads, "json": json.loads}


@dataclass
class LoadResult:
    concurrency: int
    seconds: float
    requests: int
    errors: int
    tokens: int
    latencies_ms: list[float]
    repeats: int = 0
    # CPU seconds each load-generator process used over its run: a process near `seconds` of CPU is saturated,
    # and the clients, not the server, may bound the level.
    client_cpu_s: tuple[float, ...] = ()

    def summary(self) -> dict[str, Any]:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.array([np.nan])
        return {
            "concurrency": self.concurrency,
            "requests": self.requests,
            "errors": self.errors,
            "repeats": self.repeats,
            "requests_per_s": round(self.requests / self.seconds, 1),
            "tokens_per_s": round(self.tokens / self.seconds, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 2),
            "p95_ms": round(float(np.percentile(lat, 95)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2),
            "busiest_client_cpu_percent": round(100 * max(self.client_cpu_s, default=0.0) / self.seconds, 1),
        }


async def _clients(
    url: str, bodies: list[bytes], concurrency: int, duration: float, parser: str
) -> tuple[int, int, int, list[float], int]:
    import aiohttp

    done = errors = tokens = 0
    sent = 0
    latencies: list[float] = []
    deadline = time.perf_counter() + duration
    loads = PARSERS[parser]
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client(k: int) -> None:
            nonlocal done, errors, tokens, sent
            i = k
            while time.perf_counter() < deadline:
                body = bodies[i % len(bodies)]
                i += concurrency
                sent += 1
                started = time.perf_counter()
                async with session.post(url, data=body, headers={"content-type": "application/json"}) as r:
                    answer = await r.read()
                if r.status != 200:
                    errors += 1
                    continue
                payload = loads(answer)  # read before the clock stops: a client's answer is its parsed body
                latencies.append((time.perf_counter() - started) * 1000)
                done += 1
                tokens += payload["usage"]["prompt_tokens"]

        await asyncio.gather(*(client(k) for k in range(concurrency)))
    return done, errors, tokens, latencies, max(0, sent - len(bodies))


def _worker(
    args: tuple[str, list[bytes], int, float, str],
) -> tuple[int, int, int, list[float], int, float]:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    started = time.process_time()
    return *asyncio.run(_clients(*args)), time.process_time() - started


def run_load(
    url: str,
    bodies: list[bytes],
    concurrency: int,
    duration: float,
    processes: int = 4,
    parser: str = "orjson",
) -> LoadResult:
    """`parser`: how the clients read each answer (PARSERS)."""
    processes = max(1, min(processes, concurrency))
    shares = [concurrency // processes + (1 if p < concurrency % processes else 0) for p in range(processes)]
    jobs = [(url, bodies[index::processes], share, duration, parser) for index, share in enumerate(shares)]
    with mp.get_context("spawn").Pool(processes) as pool:
        parts = pool.map(_worker, jobs)
    # Each worker ran for `duration` (process start-up is outside that window).
    return LoadResult(
        concurrency=concurrency,
        seconds=duration,
        requests=sum(p[0] for p in parts),
        errors=sum(p[1] for p in parts),
        tokens=sum(p[2] for p in parts),
        latencies_ms=[x for p in parts for x in p[3]],
        repeats=sum(p[4] for p in parts),
        client_cpu_s=tuple(p[5] for p in parts),
    )


if __name__ == "__main__":
    import sys
    from pathlib import Path

    from benchmarks.gpu_bench import make_texts

    # python -m benchmarks.loadgen URL MODEL_DIR CONCURRENCY SECONDS [TOKENS_PER_TEXT]
    url, model_dir, concurrency, seconds = (
        sys.argv[1],
        Path(sys.argv[2]),
        int(sys.argv[3]),
        float(sys.argv[4]),
    )
    tokens = int(sys.argv[5]) if len(sys.argv) > 5 else 128
    # Enough distinct texts that none is sent twice at ~40 requests a second per client (no cache hits).
    texts = make_texts(model_dir / "tokenizer.json", max(512, int(concurrency * seconds * 40)), tokens)
    bodies = [json.dumps({"input": t, "encoding_format": "base64"}).encode() for t in texts]
    result = run_load(url, bodies, concurrency, seconds, processes=min(8, max(1, concurrency // 16)))
    print(json.dumps(result.summary()))
