"""GPU benchmark, one device call: engine alone, sentence-transformers, and the server under concurrent HTTP
load, on the same random weights of the real Qwen3-Embedding shape (bf16) and the same ~128-token texts.

    python -m benchmarks.gpu_bench --out results/ [--shape 0.6b] [--duration 12] [--model DIR]

Random weights are written under --work (default results/models) once per shape; --model runs a model
directory of your own instead (a real checkpoint, say).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

import embedserver.runtime  # noqa: F401  (readies the process for MLX: BLAS preload, MLX settings)
from benchmarks.loadgen import run_load
from embedserver_testing.random_model import write_random_qwen3
from embedserver_testing.server_process import running_server
from embedserver_testing.stage_times import level_means


def log(*parts: Any) -> None:
    print(time.strftime("%H:%M:%S"), *parts, flush=True)


def make_texts(tokenizer_path: Path, n: int, tokens: int, seed: int = 0) -> list[str]:
    """Texts of exactly `tokens` tokens with the appended <|endoftext|> (random common-vocabulary tokens)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_path))
    rng = np.random.default_rng(seed)
    texts: list[str] = []
    while len(texts) < n:
        ids = rng.integers(300, 30000, size=tokens * 2).tolist()
        text = tok.decode(ids)
        enc = tok.encode(text).ids  # post-processor appends <|endoftext|>
        if len(enc) < tokens:
            continue
        text = tok.decode(enc[: tokens - 1])
        if len(tok.encode(text).ids) == tokens:
            texts.append(text)
    return texts


def timed(fn: Any, repeat: int = 5, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def spaced(fn: Any, repeat: int = 20, gap_s: float = 0.005) -> float:
    """Median time of `fn` called alone, `gap_s` after the previous call: how a one-client server meets each
    request (back to back, the CPU that queues the kernels stays busy and the pass is faster)."""
    fn()
    times = []
    for _ in range(repeat):
        time.sleep(gap_s)
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def bench_engine(model_dir: Path, texts: list[str]) -> dict[str, Any]:
    import mlx.core as mx

    from embedserver.catalog import ModelSpec
    from embedserver.runtime.device import bound_gpu_memory
    from embedserver.runtime.loader import load_runner
    from embedserver.settings import DEFAULT_GPU_WORKSPACE_BYTES

    runner = load_runner(ModelSpec(name="bench", source=str(model_dir)))
    # As the server runs it (GPU_WORKSPACE_GB's default): without a bound, the 4B shape at 256 x 128 queued more work
    # than the card holds and the allocator spent its time freeing (51k tokens/s against 75k at 128 x 128).
    mx.clear_cache()
    bound_gpu_memory(DEFAULT_GPU_WORKSPACE_BYTES)
    out: dict[str, Any] = {"device": str(mx.default_device()), "shapes": {}}
    rng = np.random.default_rng(1)
    for batch, length in [(32, 16), (32, 128), (128, 128), (256, 128), (64, 512), (8, 2048)]:
        seqs = [rng.integers(300, 30000, size=length).tolist() for _ in range(batch)]
        dt = timed(lambda s=seqs: runner.embed(s))
        out["shapes"][f"{batch}x{length}"] = round(batch * length / dt)
        log(f"engine {batch}x{length}: {batch * length / dt:,.0f} tok/s")

    # Back-to-back batches with the next graph built while the GPU runs the previous one.
    seqs = [rng.integers(300, 30000, size=128).tolist() for _ in range(256)]

    def pipelined(rounds: int = 8) -> None:
        from embedserver.runtime.padding import pad_right
        from embedserver.runtime.pooling import pool

        pending = []
        for _ in range(rounds):
            ids, lengths = pad_right(seqs, runner.tokenizer.pad_id)
            lm = mx.array(lengths)
            pooled = pool(runner.encoder(mx.array(ids), lm), lm, runner.pooling).astype(mx.float32)
            mx.async_eval(pooled)  # type: ignore[no-untyped-call]
            pending.append(pooled)
            if len(pending) > 1:
                np.array(pending.pop(0))
        for p in pending:
            np.array(p)

    dt = timed(pipelined, repeat=3, warmup=1)
    out["pipelined_256x128"] = round(8 * 256 * 128 / dt)
    log(f"engine pipelined 256x128: {out['pipelined_256x128']:,} tok/s")

    # Compiled forward at a fixed shape (kernel fusion), to see what mx.compile would buy.
    def forward(ids: Any, lengths: Any) -> Any:
        from embedserver.runtime.pooling import pool

        return pool(runner.encoder(ids, lengths), lengths, runner.pooling).astype(mx.float32)

    compiled = mx.compile(forward)
    ids = mx.array(np.array(seqs, dtype=np.int32))
    lengths = mx.array(np.full(256, 128, dtype=np.int32))
    dt = timed(lambda: mx.eval(compiled(ids, lengths)))
    out["compiled_256x128"] = round(256 * 128 / dt)
    log(f"engine compiled 256x128: {out['compiled_256x128']:,} tok/s")

    # The real texts, as the server would batch them; also single-text latency.
    encoded = runner.tokenizer.encode_batch(texts[:256])
    dt = timed(lambda: runner.embed(encoded))
    out["texts_256"] = round(sum(map(len, encoded)) / dt)
    out["single_text_ms"] = round(timed(lambda: runner.embed(encoded[:1]), repeat=20) * 1000, 3)
    out["single_text_spaced_ms"] = round(spaced(lambda: runner.embed(encoded[:1])) * 1000, 3)
    log(
        f"engine on texts: {out['texts_256']:,} tok/s; one text {out['single_text_ms']} ms back to back, "
        f"{out['single_text_spaced_ms']} ms arriving alone"
    )
    vectors = runner.embed(encoded[:8])
    out["_vectors"] = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).tolist()
    gc.collect()
    mx.clear_cache()
    return out


def bench_sentence_transformers(model_dir: Path, texts: list[str]) -> dict[str, Any]:
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cuda", model_kwargs={"torch_dtype": torch.bfloat16})
    out: dict[str, Any] = {"version": __import__("sentence_transformers").__version__}
    for batch in (64, 256):
        model.encode(texts[:batch], batch_size=batch)
        torch.cuda.synchronize()
        t = time.perf_counter()
        model.encode(texts, batch_size=batch, normalize_embeddings=True)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t
        out[f"batch_{batch}_texts_per_s"] = round(len(texts) / dt, 1)
        out[f"batch_{batch}_tokens_per_s"] = round(len(texts) * 128 / dt)
        log(
            f"sentence-transformers batch {batch}: {len(texts) / dt:,.0f} texts/s, {len(texts) * 128 / dt:,.0f} tok/s"
        )
    out["_vectors"] = model.encode(texts[:8], normalize_embeddings=True).tolist()
    gc.collect()
    torch.cuda.empty_cache()
    return out


def bench_server(model_dir: Path, texts: list[str], duration: float, out_dir: Path) -> dict[str, Any]:
    import httpx

    env = {
        "MODEL_NAME": str(model_dir),
        "MAX_BATCH_SIZE": "256",
        "MAX_BATCH_TOKENS": "65536",
        "MAX_QUEUE_TEXTS": "100000",
        "BATCH_WAIT_MS": os.environ.get("BENCH_BATCH_WAIT_MS", "2"),
        "CACHE_MAX_ENTRIES": "0",  # measure compute, not the cache
        "LOG_LEVEL": "WARNING",
    }
    with running_server(env, out_dir / "server.log") as url:
        bodies = [
            json.dumps({"input": t, "model": str(model_dir), "encoding_format": "base64"}).encode()
            for t in texts
        ]
        results = []
        one_client: dict[str, Any] = {}
        for concurrency in (1, 8, 32, 128, 256):
            before = httpx.get(f"{url}/metrics").text
            r = run_load(
                f"{url}/v1/embeddings",
                bodies,
                concurrency,
                duration if concurrency > 1 else duration / 2,
                processes=min(8, max(1, concurrency // 16)),
            )
            results.append(r.summary())
            log("server", r.summary())
            if concurrency == 1:
                one_client = _one_client_split(r.summary(), httpx.get(f"{url}/metrics").text, before)
                log("server, one client:", one_client)
        metrics = httpx.get(f"{url}/metrics").text
        (out_dir / "server_metrics.txt").write_text(metrics)
        return {"load": results, "one_client": one_client}


def _one_client_split(summary: dict[str, Any], metrics: str, before: str) -> dict[str, Any]:
    """A lone client's p50 against the forward pass of the same requests (the server's histograms over that
    level only): what the serving side adds, free of the device's drift between separately timed runs."""
    out: dict[str, Any] = level_means(metrics, since=before)
    if "forward_mean_ms" in out:
        out["p50_over_forward_ms"] = round(summary["p50_ms"] - out["forward_mean_ms"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--shape", default="0.6b")
    parser.add_argument("--duration", type=float, default=12.0)
    parser.add_argument("--skip", default="", help="comma list of: engine,st,server")
    parser.add_argument("--model", type=Path, help="a model directory to run instead of random weights")
    parser.add_argument("--work", type=Path, default=Path("results/models"), help="where random weights go")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    skip = set(filter(None, args.skip.split(",")))
    model_dir = args.model or args.work / f"qwen3-{args.shape}"
    if args.model is None and not (model_dir / "model.safetensors").exists():
        log("writing random weights", model_dir)
        write_random_qwen3(model_dir, shape=args.shape, dtype="bfloat16", layout="hf")
    texts = make_texts(model_dir / "tokenizer.json", 2048, 128)
    results: dict[str, Any] = {"shape": args.shape, "date": time.strftime("%Y-%m-%d"), "text_tokens": 128}
    try:
        import subprocess as sp

        results["gpu"] = sp.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        results["gpu"] = "unknown"
    if "engine" not in skip:
        results["engine"] = bench_engine(model_dir, texts)
    if "st" not in skip:
        results["sentence_transformers"] = bench_sentence_transformers(model_dir, texts)
    if "engine" not in skip and "st" not in skip:
        a = np.array(results["engine"].pop("_vectors"))
        b = np.array(results["sentence_transformers"].pop("_vectors"))
        results["engine_vs_st_cosine_min"] = round(float((a * b).sum(axis=1).min()), 5)
        log("cosine engine vs sentence-transformers (bf16):", results["engine_vs_st_cosine_min"])
    if "server" not in skip:
        results["server"] = bench_server(model_dir, texts, args.duration, args.out)
    for section in results.values():
        if isinstance(section, dict):
            section.pop("_vectors", None)
    (args.out / "gpu_results.json").write_text(json.dumps(results, indent=2))
    log(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
