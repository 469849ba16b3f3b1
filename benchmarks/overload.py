"""Overload: drive the server at FACTOR times its measured capacity and check that it sheds load.

1. Capacity: CLIENTS closed-loop clients send requests of TEXTS unique texts for CAPACITY_S seconds; texts/s
   answered with 200 is the capacity.
2. Overload: requests arrive open-loop (no waiting for answers) at FACTOR × capacity for SECONDS.
3. Recovery: IDLE_S seconds idle, then one request must answer 200.

Passes (exit 0) when every answer was 200 or 429 (429s with Retry-After, in OpenAI's error shape), no client
timed out, the p99 latency of accepted requests stayed under --p99-limit-ms, and the server's resident memory
after the idle period is within --memory-slack of what it was after the capacity phase.

    python -m benchmarks.overload                       # tiny random model on this machine, 60 s at 5x
    python -m benchmarks.overload --seconds 5 --json results/overload.json
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from pathlib import Path
from typing import Any

import orjson

from benchmarks.traffic import Tally, post, report, rss_mb, unique_text
from embedserver_testing.server_process import model_server


async def _capacity(url: str, clients: int, texts: int, seconds: float, rng: random.Random) -> Tally:
    import aiohttp

    tally = Tally()
    serial = iter(range(10**9))
    deadline = time.perf_counter() + seconds
    async with aiohttp.ClientSession() as session:

        async def client() -> None:
            while time.perf_counter() < deadline:
                body = {"input": [unique_text(rng, 24, next(serial)) for _ in range(texts)]}
                await post(session, url, body, tally, texts, timeout=60)

        await asyncio.gather(*(client() for _ in range(clients)))
    return tally


async def _overload(
    url: str, rate: float, texts: int, seconds: float, rng: random.Random, pid: int
) -> tuple[Tally, list[float], int, int]:
    """Open loop: one request every 1/rate seconds whatever the answers; returns the tally, RSS samples and
    how many 429s lacked Retry-After or the error shape, and how many were queue timeouts."""
    import aiohttp

    tally = Tally()
    rss: list[float] = []
    malformed = 0
    late = [0]
    serial = iter(range(10**9, 2 * 10**9))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one() -> None:
            nonlocal malformed
            body = {"input": [unique_text(rng, 24, next(serial)) for _ in range(texts)]}
            answer = await post(session, url, body, tally, texts, timeout=120)
            if answer is not None and answer[0] == 429:
                _, headers, payload = answer
                # overloaded: refused at admission; queue_timeout: accepted, then waited past MAX_QUEUE_WAIT_S.
                code = orjson.loads(payload)["error"]["code"]
                late[0] += code == "queue_timeout"
                if not headers.get("Retry-After") or code not in ("overloaded", "queue_timeout"):
                    malformed += 1

        tasks: set[asyncio.Task[None]] = set()
        start = time.perf_counter()
        sent = 0
        # Each request in flight holds a socket here and one in the server: arrivals past this many in
        # flight are not sent (counted as `not_sent`), so the load generator never runs out of descriptors.
        most_in_flight = _descriptor_budget()
        next_sample = start
        while (now := time.perf_counter()) - start < seconds:
            due = int((now - start) * rate) + 1
            for _ in range(due - sent):
                if len(tasks) >= most_in_flight:
                    tally.client_errors["not_sent"] += 1
                    continue
                task = asyncio.create_task(one())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            sent = due
            if now >= next_sample:
                rss.append(rss_mb(pid))
                next_sample += 1.0
            await asyncio.sleep(min(0.005, 1 / rate))
        await asyncio.gather(*tasks)
    return tally, rss, malformed, late[0]


def _descriptor_budget() -> int:
    """Raise this process's open-file limit to its hard limit; allow a third of it for requests in flight."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return max(64, min(soft, 1 << 20) // 3)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", help="model directory (default: a tiny random Qwen3 written to a temp dir)"
    )
    parser.add_argument("--factor", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--capacity-s", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--texts", type=int, default=16, help="texts per request")
    parser.add_argument("--idle-s", type=float, default=15.0)
    parser.add_argument("--p99-limit-ms", type=float, default=10_000.0)
    parser.add_argument("--memory-slack", type=float, default=0.10, help="allowed RSS growth, as a fraction")
    parser.add_argument("--env", action="append", default=[], help="extra server setting, KEY=VALUE")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    # Every text is unique, so a cache would only fill (up to its bound) and hide what the overload left
    # behind; it is off unless --env turns it on.
    env = {"CACHE_MAX_ENTRIES": "0"} | dict(item.split("=", 1) for item in args.env)
    with model_server(args.model, env) as (url, proc):
        result = _run(url + "/v1/embeddings", proc.pid, args)
    report(result, args.json)


def _run(url: str, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(0)
    capacity = asyncio.run(_capacity(url, args.clients, args.texts, args.capacity_s, rng))
    capacity_texts_s = capacity.texts_ok / args.capacity_s
    rss_before = rss_mb(pid)
    rate = args.factor * capacity_texts_s / args.texts
    started = time.perf_counter()
    tally, rss, malformed, queue_timeouts = asyncio.run(
        _overload(url, rate, args.texts, args.seconds, rng, pid)
    )
    overload_s = time.perf_counter() - started
    time.sleep(args.idle_s)
    rss_after = rss_mb(pid)
    recovery = Tally()
    asyncio.run(_one(url, recovery))
    summary = tally.summary()
    p99 = summary.get("latency_ms_200", {}).get("p99", float("inf"))
    checks = {
        "only_200_and_429": set(tally.statuses) <= {200, 429},
        "no_client_errors": not [kind for kind in tally.client_errors if kind != "not_sent"],
        "429s_well_formed": malformed == 0,
        "accepted_p99_bounded": p99 <= args.p99_limit_ms,
        "memory_back_near_baseline": rss_after <= rss_before * (1 + args.memory_slack),
        "serves_after": recovery.statuses == {200: 1},
    }
    return {
        "capacity_texts_per_s": round(capacity_texts_s, 1),
        "offered_texts_per_s": round(rate * args.texts, 1),
        "offered_requests_per_s": round(rate, 1),
        "overload_seconds": round(overload_s, 1),
        "accepted_texts_per_s": round(tally.texts_ok / overload_s, 1),
        "queue_timeouts": queue_timeouts,
        **summary,
        "rss_mb": {
            "after_capacity_phase": round(rss_before, 1),
            "peak_during_overload": round(max(rss, default=0.0), 1),
            f"after_{args.idle_s:g}s_idle": round(rss_after, 1),
        },
        "checks": checks,
        "passed": all(checks.values()),
    }


async def _one(url: str, tally: Tally) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        await post(session, url, {"input": "after the storm"}, tally, 1, timeout=30)


if __name__ == "__main__":
    main()
