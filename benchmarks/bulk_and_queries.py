"""While one client embeds documents in large requests, how long do another client's queries wait?

  python -m benchmarks.bulk_and_queries MODEL_DIR [--bulk 32x256] [--query-tokens 16] [--seconds 90]
      [--every 1.0] [--tree DIR] [SETTING=VALUE ...]

Starts the server (from `--tree`, a source tree, else this one) on MODEL_DIR with its defaults and the
settings given. One thread sends requests of ROWS texts of LENGTH tokens back to back (an indexing job);
another sends a query of `--query-tokens` tokens every `--every` seconds, one at a time. Every text is new.
Prints each query's outcome as it comes, then the queries' latencies at the client, their answers by status
(429 queue_timeout: a query that waited past MAX_QUEUE_WAIT_S; 429 overloaded: refused at once), and the
texts per second the bulk client got. Where passes are fast (a GPU and the small model) queries should not
notice the bulk client; where they are slow (CPUs, large models) this shows what a query waits.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

from benchmarks.gpu_bench import make_texts
from embedserver_testing.server_process import server_process


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", type=Path)
    parser.add_argument("--bulk", default="32x256", help="ROWSxLENGTH: texts a bulk request, tokens a text")
    parser.add_argument("--query-tokens", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=90.0, help="how long queries are sent")
    parser.add_argument(
        "--every", type=float, default=1.0, help="seconds between queries' starts, at least (0: no queries)"
    )
    parser.add_argument("--tree", type=Path, help="a source tree to serve from (another commit's checkout)")
    parser.add_argument("settings", nargs="*", help="SETTING=VALUE for the server")
    args = parser.parse_args()
    rows, length = (int(n) for n in args.bulk.split("x"))
    tokenizer = args.model / "tokenizer.json"
    env = {"MODEL_NAME": str(args.model.resolve()), "LOG_LEVEL": "WARNING", "HF_HUB_OFFLINE": "1"}
    env |= dict(setting.split("=", 1) for setting in args.settings)
    if args.tree:
        env["PYTHONPATH"] = str(args.tree.resolve())
    queries = (
        make_texts(tokenizer, int(args.seconds / args.every) + 1, args.query_tokens, seed=1)
        if args.every
        else []
    )
    done = threading.Event()
    bulk_texts: list[tuple[float, int]] = []  # (when answered, texts) per bulk request answered 200
    bulk_statuses: Counter[int] = Counter()

    def bulk(url: str) -> None:
        with httpx.Client(timeout=3600) as client:
            pool: list[str] = []
            seed = 2
            while not done.is_set():
                if len(pool) < rows:  # drawn 16 requests' worth at a time: each draw reads the vocabulary
                    pool = make_texts(tokenizer, 16 * rows, length, seed=seed)
                    seed += 1
                texts, pool = pool[:rows], pool[rows:]
                answer = client.post(f"{url}/v1/embeddings", json={"input": texts})
                bulk_statuses[answer.status_code] += 1
                if answer.status_code == 200:
                    bulk_texts.append((time.perf_counter(), rows))

    with server_process(env, cwd=args.tree) as (url, _), httpx.Client(timeout=3600) as client:
        worker = threading.Thread(target=bulk, args=(url,), daemon=True)
        began = time.perf_counter()
        worker.start()
        outcomes: list[tuple[int, str, float]] = []  # status, error code, ms
        if not queries:  # the bulk client alone: its throughput without queries beside it
            time.sleep(args.seconds + 2.0)
        for k, text in enumerate(queries):
            start = began + 2.0 + k * args.every  # the bulk client's first request is in by then
            time.sleep(max(0.0, start - time.perf_counter()))
            if time.perf_counter() - began > args.seconds + 2.0:
                break
            sent = time.perf_counter()
            answer = client.post(f"{url}/v1/embeddings", json={"input": text})
            ms = (time.perf_counter() - sent) * 1000
            code = "" if answer.status_code == 200 else answer.json()["error"].get("code") or ""
            outcomes.append((answer.status_code, code, ms))
            print(f"  {sent - began:6.1f} s  query {answer.status_code} {code:14s} {ms:9.1f} ms", flush=True)
        done.set()
        elapsed = time.perf_counter() - began
    answered = [ms for status, _, ms in outcomes if status == 200]
    by_status = Counter(f"{status} {code}".strip() for status, code, _ in outcomes)
    print(f"queries: {dict(by_status)}")
    if answered:
        print(
            f"answered queries: p50 {np.median(answered):.0f} ms, p90 {np.percentile(answered, 90):.0f}, "
            f"max {max(answered):.0f} ({len(answered)})"
        )
    texts = sum(n for when, n in bulk_texts if when - began <= elapsed)
    print(
        f"bulk client: {texts} texts answered in {elapsed:.0f} s ({texts / elapsed:.2f} texts/s), {dict(bulk_statuses)}"
    )


if __name__ == "__main__":
    main()
