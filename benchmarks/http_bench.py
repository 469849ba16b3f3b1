"""HTTP benchmark of a running (or spawned) embedserver: latency, batch latency, throughput by concurrency,
cache speedup, and the engine alone on the same inputs so serving overhead is a ratio. Loopback only.

    python -m benchmarks.http_bench --quick                          # spawns a server with MODEL_NAME / --model
    python -m benchmarks.http_bench --url http://127.0.0.1:8000 --iterations 200 --workers 8 --json out.json --plot out.png
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.plots import load_plot
from benchmarks.traffic import texts


def percentiles(ms: list[float]) -> dict[str, float]:
    a = np.array(ms)
    return {f"p{p}": round(float(np.percentile(a, p)), 2) for p in (50, 95, 99)} | {"n": len(ms)}


def server(model: str | None) -> AbstractContextManager[str]:
    """A server of our own (MODEL_NAME from --model or the environment) at its defaults, its access log
    included, its log in results/http_bench-server.log."""
    from embedserver_testing.server_process import running_server

    log = Path("results") / "http_bench-server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    return running_server({"MODEL_NAME": model} if model else {}, log)


def single_latency(client: httpx.Client, model: str, iterations: int) -> dict[str, Any]:
    ms = []
    for text in texts(iterations, 100, seed=1):
        t = time.perf_counter()
        client.post("/v1/embeddings", json={"input": text, "model": model}).raise_for_status()
        ms.append((time.perf_counter() - t) * 1000)
    return percentiles(ms)


def batch_latency(client: httpx.Client, model: str, iterations: int) -> dict[str, Any]:
    out = {}
    for size in (1, 8, 32, 128):
        ms = []
        for i in range(max(3, iterations // 4)):
            batch = texts(size, 100, seed=1000 + i * size)
            t = time.perf_counter()
            client.post("/v1/embeddings", json={"input": batch, "model": model}).raise_for_status()
            ms.append((time.perf_counter() - t) * 1000)
        out[str(size)] = percentiles(ms) | {"texts_per_s": round(size / (float(np.median(ms)) / 1000), 1)}
    return out


# More requests per second than any level sends here, so each level's texts outnumber its requests.
_TEXTS_PER_SECOND = 4000


def throughput(url: str, model: str, levels: list[int], seconds: float, workers: int) -> list[dict[str, Any]]:
    """Requests/s and latency per concurrency level. Each level sends texts no earlier request sent (its own
    seed, more texts than it can send), so the levels compare batching, not cache hits; the cache hits the
    server counted during the level are reported with it (0 unless a level outran the texts)."""
    from benchmarks.loadgen import run_load
    from embedserver_testing.stage_times import level_means

    out = []
    for c in levels:
        level_texts = texts(int(seconds * _TEXTS_PER_SECOND), 100, seed=100 + c)
        bodies = [json.dumps({"input": t, "model": model}).encode() for t in level_texts]
        before = httpx.get(f"{url}/metrics").text
        summary = run_load(f"{url}/v1/embeddings", bodies, c, seconds, processes=min(workers, c)).summary()
        after = httpx.get(f"{url}/metrics").text
        out.append(
            summary
            | {"cache_hits": _cache_hits(after) - _cache_hits(before)}
            | level_means(after, since=before)
        )
    return out


def _cache_hits(metrics: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    families = text_string_to_metric_families(metrics)
    return sum(
        s.value
        for f in families
        if f.name == "embedserver_cache_hits"
        for s in f.samples
        if s.name.endswith("_total")
    )


def cache_speedup(client: httpx.Client, model: str, iterations: int) -> dict[str, Any]:
    cold, warm = [], []
    for i, text in enumerate(texts(max(5, iterations // 4), 100, seed=99)):
        body = {"text": f"{text} cache probe {i} {time.time_ns()}", "model": model}
        cold.append(client.post("/embed", json=body).json()["processing_time_ms"])
        hit = client.post("/embed", json=body).json()
        assert hit["cached"], "the second request should be a cache hit"
        warm.append(hit["processing_time_ms"])
    return {
        "miss_server_ms": percentiles(cold),
        "hit_server_ms": percentiles(warm),
        "speedup": round(float(np.median(cold) / max(np.median(warm), 1e-6)), 1),
    }


def engine_alone(model: str, iterations: int) -> dict[str, Any]:
    """The same texts through the engine in this process, no HTTP and no batcher."""
    import embedserver.runtime  # noqa: F401  (readies the process for MLX: BLAS preload, MLX settings)
    from embedserver.catalog import load_catalog, operator_model
    from embedserver.runtime.loader import load_runner
    from embedserver.settings import Settings

    settings = Settings()
    _, spec = operator_model(load_catalog(settings.catalog_file, settings.model_sources), model)
    runner = load_runner(spec)
    runner.warmup()
    ms = []
    for text in texts(iterations, 100, seed=1):
        ids = runner.tokenizer.encode_batch([text])
        t = time.perf_counter()
        runner.embed(ids)
        ms.append((time.perf_counter() - t) * 1000)
    batch = runner.tokenizer.encode_batch(texts(128, 100, seed=7))
    t = time.perf_counter()
    runner.embed(batch)
    dt = time.perf_counter() - t
    return {"single_ms": percentiles(ms), "batch128_tokens_per_s": round(sum(map(len, batch)) / dt)}


def report(results: dict[str, Any]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(json.dumps(results, indent=2))
        return
    # Piped or logged output has no terminal width to read; 80 columns would clip the throughput table.
    console = Console() if sys.stdout.isatty() else Console(width=120)
    table = Table(title=f"throughput ({results['model']}; times in ms)")
    for column in (
        "clients",
        "req/s",
        "tokens/s",
        "p50",
        "p95",
        "p99",
        "errors",
        "cache hits",
        "texts/pass",
        "pass",
    ):
        table.add_column(column, justify="right")
    for r in results["throughput"]:
        table.add_row(
            str(r["concurrency"]),
            f"{r['requests_per_s']:,.1f}",
            f"{r['tokens_per_s']:,.0f}",
            str(r["p50_ms"]),
            str(r["p95_ms"]),
            str(r["p99_ms"]),
            str(r["errors"]),
            f"{r['cache_hits']:.0f}",
            str(r.get("texts_per_pass", "-")),
            str(r.get("forward_mean_ms", "-")),
        )
    console.print(table)
    latency = Table(title="latency (ms)")
    for column in ("what", "p50", "p95", "p99"):
        latency.add_column(column, justify="right")
    rows = [("single text, HTTP", results["single"])]
    rows += [(f"batch of {k}, HTTP", v) for k, v in results["batch"].items()]
    rows += [
        ("single text, engine alone", results["engine"]["single_ms"]),
        ("cache miss (server time)", results["cache"]["miss_server_ms"]),
        ("cache hit (server time)", results["cache"]["hit_server_ms"]),
    ]
    for name, p in rows:
        latency.add_row(name, str(p["p50"]), str(p["p95"]), str(p["p99"]))
    console.print(latency)
    console.print(
        f"serving overhead, one text: {results['overhead_ms']} ms over the engine; "
        f"cache speedup {results['cache']['speedup']}x"
    )
    alone = next((r for r in results["throughput"] if r["concurrency"] == 1 and "forward_mean_ms" in r), None)
    if alone:
        console.print(
            f"one client: p50 {alone['p50_ms']} ms over its own forward passes ({alone['forward_mean_ms']} ms): "
            f"{alone['p50_ms'] - alone['forward_mean_ms']:.2f} ms of serving"
        )


def plot(results: dict[str, Any], path: Path) -> None:
    load_plot(results["throughput"], f"embedserver {results['model']} ({results['date']})", path)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="a running server; without it one is started")
    parser.add_argument("--model", default=os.environ.get("MODEL_NAME") or None)
    parser.add_argument("--quick", action="store_true", help="few iterations, concurrency 1/8/32, 5 s each")
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--workers", type=int, default=4, help="load-generator processes")
    parser.add_argument("--seconds", type=float, default=10.0, help="per concurrency level")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    iterations = 10 if args.quick else args.iterations
    levels = [1, 8, 32] if args.quick else [1, 8, 32, 128, 256]
    seconds = 5.0 if args.quick else args.seconds
    with server(args.model) if args.url is None else _given(args.url) as url:
        with httpx.Client(base_url=url, timeout=120) as client:
            model = args.model or client.get("/models").json()["default"]
            results: dict[str, Any] = {"model": model, "date": time.strftime("%Y-%m-%d %H:%M"), "url": url}
            results["single"] = single_latency(client, model, iterations)
            results["batch"] = batch_latency(client, model, iterations)
            results["cache"] = cache_speedup(client, model, iterations)
        results["throughput"] = throughput(url, model, levels, seconds, args.workers)
    results["engine"] = engine_alone(model, iterations)
    results["overhead_ms"] = round(results["single"]["p50"] - results["engine"]["single_ms"]["p50"], 2)
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if args.plot:
        plot(results, args.plot)


@contextmanager
def _given(url: str) -> Iterator[str]:
    yield url


if __name__ == "__main__":
    main()
