"""While a second model loads, how long do requests to the model already serving wait?

  python -m benchmarks.load_stall SERVED_DIR LOADED_DIR [--before 50] [--tree DIR] [SETTING=VALUE ...]

Starts the server (from `--tree`, a source tree, else this one) on SERVED_DIR (its default model) with
LOADED_DIR as the catalog's `medium` (`MODEL_SOURCES`), times `--before` requests to the served model, then asks for `medium` (which loads it)
and, until that answer comes, sends one request at a time to the served model: their latencies at the client,
each with its time since the load began. Every text is new. A load holds the thread every forward pass runs
on; what a served model's request waits here is what the load leaves it (runtime/load_steps.py).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from embedserver_testing.server_process import server_process


def timed(client: httpx.Client, url: str, text: str) -> float:
    started = time.perf_counter()
    answer = client.post(f"{url}/v1/embeddings", json={"input": text})
    answer.raise_for_status()
    return (time.perf_counter() - started) * 1000


def summary(ms: list[float]) -> str:
    return (
        f"p50 {np.median(ms):.1f} ms, p90 {np.percentile(ms, 90):.1f}, max {max(ms):.1f} ({len(ms)} requests)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("served", type=Path)
    parser.add_argument("loaded", type=Path)
    parser.add_argument("--before", type=int, default=50, help="requests timed before the load")
    parser.add_argument("--tree", type=Path, help="a source tree to serve from (another commit's checkout)")
    parser.add_argument("settings", nargs="*", help="SETTING=VALUE for the server")
    args = parser.parse_args()
    env = {
        "MODEL_NAME": str(args.served.resolve()),
        "MODEL_SOURCES": json.dumps({"medium": str(args.loaded.resolve())}),
        "LOG_LEVEL": "WARNING",
        "HF_HUB_OFFLINE": "1",
    }
    env |= dict(setting.split("=", 1) for setting in args.settings)
    if args.tree:
        env["PYTHONPATH"] = str(args.tree.resolve())
    with server_process(env, cwd=args.tree) as (url, _), httpx.Client(timeout=600) as client:
        before = [timed(client, url, f"before the load {i} {time.time()}") for i in range(args.before)]
        print(f"before the load: {summary(before)}")
        outcome: list[int] = []

        def load() -> None:
            with httpx.Client(timeout=600) as own:
                answer = own.post(f"{url}/v1/embeddings", json={"input": "load me", "model": "medium"})
                outcome.append(answer.status_code)

        loader = threading.Thread(target=load)
        began = time.perf_counter()
        loader.start()
        during: list[float] = []
        while loader.is_alive():
            during.append(timed(client, url, f"during the load {len(during)} {time.time()}"))
            print(f"  {time.perf_counter() - began:6.2f} s  {during[-1]:7.1f} ms")
        loader.join()
        print(f"the loaded model answered {outcome[0]} after {time.perf_counter() - began:.1f} s")
        print(f"during the load: {summary(during)}")


if __name__ == "__main__":
    main()
