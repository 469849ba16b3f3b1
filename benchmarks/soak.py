"""Soak: mixed traffic for MINUTES, the server's resident memory sampled every few seconds.

The mix (closed loop, CLIENTS at once): short queries drawn from a small pool (so the cache hits), unique
128-512-token passages (so it fills), batches of 16-64 texts, native /embed calls, and a trickle of bad
requests (400s). Passes (exit 0) with no 5xx, no client errors, resident memory at the end (median of the last
10% of samples) within --growth of its median just after the warm-up (25-35% of the run), and the cache within CACHE_MAX_BYTES.

    python -m benchmarks.soak --minutes 20 --json results/soak.json --csv results/soak_rss.csv
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import random
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.traffic import Tally, post, report, rss_mb, texts, unique_text
from embedserver_testing.server_process import model_server

_CACHE_MAX_BYTES = 16 * 2**20  # small, so the soak reaches the cache's bound and evicts


def _request(rng: random.Random, serial: int, queries: list[str]) -> tuple[str, dict[str, Any], int]:
    roll = rng.random()
    if roll < 0.45:
        return "/v1/embeddings", {"input": rng.choice(queries), "input_type": "query"}, 1
    if roll < 0.70:
        return "/v1/embeddings", {"input": unique_text(rng, rng.randint(100, 400), serial)}, 1
    if roll < 0.85:
        n = rng.randint(16, 64)
        batch = [unique_text(rng, rng.randint(10, 60), serial * 100 + i) for i in range(n)]
        return "/v1/embeddings", {"input": batch, "encoding_format": "base64"}, n
    if roll < 0.97:
        return "/embed", {"text": rng.choice(queries)}, 1
    return "/v1/embeddings", {"input": ["fine", ""]}, 2  # a bad request: 400


async def _traffic(url: str, clients: int, seconds: float, pid: int, every: float) -> tuple[Tally, list[Any]]:
    import aiohttp

    tally = Tally()
    samples: list[tuple[float, float]] = []
    queries = texts(2000, 8, seed=7)
    started = time.perf_counter()
    deadline = started + seconds
    serial = iter(range(10**12))

    async def client(k: int) -> None:
        rng = random.Random(k)
        while time.perf_counter() < deadline:
            path, body, n = _request(rng, next(serial), queries)
            await post(session, url + path, body, tally, n, timeout=60)

    async def sampler() -> None:
        while time.perf_counter() < deadline:
            samples.append((round(time.perf_counter() - started, 1), round(rss_mb(pid), 1)))
            await asyncio.sleep(every)

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(sampler(), *(client(k) for k in range(clients)))
    return tally, samples


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", help="model directory (default: a tiny random Qwen3 written to a temp dir)"
    )
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--sample-s", type=float, default=5.0)
    parser.add_argument("--growth", type=float, default=0.05, help="allowed RSS growth after warm-up")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--csv", type=Path, help="RSS samples: seconds, MiB")
    args = parser.parse_args()

    with model_server(args.model, {"CACHE_MAX_BYTES": str(_CACHE_MAX_BYTES)}) as (url, proc):
        baseline = rss_mb(proc.pid)
        tally, samples = asyncio.run(_traffic(url, args.clients, args.minutes * 60, proc.pid, args.sample_s))
        cache_bytes = _cache_bytes(httpx.get(f"{url}/metrics").text)
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with args.csv.open("w", newline="") as f:
            csv.writer(f).writerows([("seconds", "rss_mib"), *samples])
    report(_verdict(args, baseline, tally, samples, cache_bytes), args.json)


def _verdict(
    args: argparse.Namespace, baseline: float, tally: Tally, samples: list[Any], cache_bytes: float
) -> dict[str, Any]:
    # Trend, not jitter: the median of the samples just after warm-up (25-35% of the run) against the median
    # of the last 10%; batches of different shapes make single samples jump by tens of MiB.
    n = len(samples)
    after_warmup = float(np.median([s[1] for s in samples[n // 4 : max(n // 4 + 1, int(n * 0.35))]]))
    end = float(np.median([s[1] for s in samples[int(n * 0.9) :]]))
    peak = max(s[1] for s in samples)
    summary = tally.summary()
    statuses = {int(k) for k in summary["statuses"]}
    checks = {
        "no_5xx": all(s < 500 for s in statuses),
        "no_client_errors": not tally.client_errors,
        "rss_flat_after_warmup": end <= after_warmup * (1 + args.growth),
        "cache_within_bound": cache_bytes <= _CACHE_MAX_BYTES,
    }
    return {
        "minutes": args.minutes,
        "clients": args.clients,
        "requests": sum(tally.statuses.values()),
        "texts_embedded_ok": tally.texts_ok,
        **summary,
        "rss_mib": {
            "at_start": round(baseline, 1),
            "after_warmup_median": round(after_warmup, 1),
            "end_median": round(end, 1),
            "peak": peak,
            "growth_after_warmup_pct": round(100 * (end / after_warmup - 1), 2),
        },
        "cache_bytes": cache_bytes,
        "cache_max_bytes": _CACHE_MAX_BYTES,
        "checks": checks,
        "passed": all(checks.values()),
    }


def _cache_bytes(metrics: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    families = text_string_to_metric_families(metrics)
    return next(s.value for f in families for s in f.samples if s.name == "embedserver_cache_bytes")


if __name__ == "__main__":
    main()
