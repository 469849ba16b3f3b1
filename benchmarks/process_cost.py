"""CPU time each server process spends per request under load: the engine and each front-end, so a change to
the request path (a layer, a log line, the link) is judged by what it costs, not only by requests/s, which this
machine's other load moves more.

  python -m benchmarks.process_cost MODEL_DIR [--workers 1] [--clients 64] [--seconds 8] [--tokens 16] [SETTING=VALUE ...]

Starts a server (`python -m embedserver`, HTTP_WORKERS=--workers, the settings given), sends single-text
requests of --tokens tokens, every text new, for 2 s to warm it, then for --seconds while reading each
process's user + system CPU time before and after (psutil).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import psutil

from benchmarks.gpu_bench import make_texts
from benchmarks.loadgen import run_load
from embedserver_testing.server_process import server_process


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", type=Path)
    parser.add_argument("--workers", type=int, default=1, help="HTTP_WORKERS")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("settings", nargs="*", help="SETTING=VALUE for the server")
    args = parser.parse_intermixed_args()
    texts = make_texts(args.model / "tokenizer.json", 60_000, args.tokens, seed=int(time.time()) % 1000)
    bodies = [json.dumps({"input": text, "encoding_format": "base64"}).encode() for text in texts]
    env = {"MODEL_NAME": str(args.model), "HTTP_WORKERS": str(args.workers)}
    env |= dict(setting.split("=", 1) for setting in args.settings)
    with server_process(env) as (url, server):
        run_load(f"{url}/v1/embeddings", bodies[:2000], args.clients, 2.0, processes=1)
        engine = psutil.Process(server.pid)
        # The front-ends, not multiprocessing's resource tracker.
        processes = [engine] + [
            child
            for child in engine.children(recursive=True)
            if "resource_tracker" not in " ".join(child.cmdline())
        ]
        before = [cpu_seconds(process) for process in processes]
        load = run_load(f"{url}/v1/embeddings", bodies[2000:], args.clients, args.seconds, processes=1)
        spent = [cpu_seconds(process) - start for process, start in zip(processes, before, strict=True)]
    requests = max(load.requests, 1)
    print(
        f"{load.requests} requests in {args.seconds:g} s ({load.requests / args.seconds:,.0f}/s), {load.errors} errors"
    )
    for index, seconds in enumerate(spent):
        role = "engine" if index == 0 else f"front-end {index}"
        print(f"{role:>12}: {seconds:6.2f} s of CPU, {seconds / requests * 1e6:7.1f} µs a request")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
