"""The benchmark scripts that read the server's own numbers: per-stage means from a /metrics scrape, and a
py-spy profile per thread. Wrong here, a diagnosis of the server would be wrong too."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from benchmarks.kernel_timeline import pass_stats, summary
from benchmarks.profile_summary import summarize
from benchmarks.stage_times import level_means, stage_means
from embedserver.metrics import Metrics
from embedserver_testing.server_process import server_process


def test_stage_means_average_each_histogram_over_every_model() -> None:
    metrics = Metrics()
    metrics.inference_seconds.labels("a").observe(0.020)
    metrics.inference_seconds.labels("b").observe(0.040)
    metrics.inference_seconds.labels("b").observe(0.060)
    metrics.batch_size.labels("a").observe(64)
    metrics.tokenize_seconds.labels("a").observe(0.002)
    means = stage_means(generate_latest(metrics.registry).decode())
    assert means["embedserver_inference_seconds"] == (3, pytest.approx(0.040))
    assert means["embedserver_batch_size"] == (1, 64)
    assert means["embedserver_tokenization_seconds"] == (1, pytest.approx(0.002))
    assert "embedserver_queue_wait_seconds" not in means  # nothing observed: no mean


def test_stage_means_since_an_earlier_scrape_cover_what_came_between() -> None:
    metrics = Metrics()
    metrics.inference_seconds.labels("a").observe(0.500)
    earlier = generate_latest(metrics.registry).decode()
    metrics.inference_seconds.labels("a").observe(0.004)
    metrics.inference_seconds.labels("b").observe(0.006)
    means = stage_means(generate_latest(metrics.registry).decode(), since=earlier)
    assert means["embedserver_inference_seconds"] == (2, pytest.approx(0.005))
    assert stage_means(earlier, since=earlier) == {}
    assert level_means(generate_latest(metrics.registry).decode(), since=earlier) == {"forward_mean_ms": 5.0}


def test_profile_summary_shares_per_thread_and_counts_a_frame_once_per_stack() -> None:
    raw = [
        "thread (0x1): mlx_0;run (a.py:1);f (b.py:2);f (b.py:2) 6",  # recursion: f counted once
        "thread (0x1): mlx_0;run (a.py:1);g (b.py:9) 2",
        "thread (0x2): MainThread;loop (c.py:3) 2",
    ]
    text = summarize(raw, top=10)
    assert "== thread (0x1): mlx_0: 8 samples (80.0%)" in text
    assert "== thread (0x2): MainThread: 2 samples (20.0%)" in text
    assert "100.0%  run (a.py:1)" in text
    assert " 75.0%  f (b.py:2)" in text and " 25.0%  g (b.py:9)" in text


def test_a_benchmark_server_whose_model_fails_stops_the_wait_at_once(tmp_path: Path) -> None:
    """The server stays up without its model (a later request retries the load); the benchmark helper must
    report the load error instead of waiting out its timeout."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    env = {"MODEL_NAME": str(broken), "HF_HUB_OFFLINE": "1", "LOG_LEVEL": "WARNING", "HTTP_WORKERS": "0"}
    started = time.monotonic()
    with (
        pytest.raises(RuntimeError, match="the default model failed to load: "),
        server_process(env, tmp_path / "server.log", timeout=120),
    ):
        pass
    assert time.monotonic() - started < 60


def test_forward_trace_records_each_pass_and_summarizes_by_shape(
    tiny_qwen3: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trace wraps Engine.launch: one row per forward pass with its texts and padded rows, vectors
    unchanged; the summary leaves out passes before the last idle second (a server's warm-up)."""
    import mlx.core as mx

    from benchmarks.forward_trace import install, summary
    from embedserver.catalog import ModelSpec
    from embedserver.runtime.loader import load_engine
    from embedserver.runtime.runner import Engine

    monkeypatch.setattr(Engine, "launch", Engine.launch)  # restored after the test, as is async_eval
    monkeypatch.setattr(mx, "async_eval", mx.async_eval)
    engine = load_engine(ModelSpec(name="t", source=str(tiny_qwen3)))
    engine.bucket_rows = True
    expected = engine.embed([[5, 6, 7]] * 3)
    warmup, trace = tmp_path / "warmup.csv", tmp_path / "trace.csv"
    trace_to = install(warmup)
    engine.embed([[5]])
    trace_to(trace)
    time.sleep(1.1)
    traced = engine.embed([[5, 6, 7]] * 3)
    engine.embed([[5, 6, 7]] * 4)
    assert traced.tolist() == expected.tolist()
    assert len(warmup.read_text().splitlines()) == 2  # header and one pass
    text = summary(trace)
    assert "(1 forward passes" in text  # the pass after the idle second only
    assert "4 x 16" in text and "filler rows: 0.0%" in text
    summary_all = summary(warmup)
    assert "1 x 16" in summary_all


async def test_batching_simulation_drives_the_real_worker() -> None:
    """The scheduling simulation's figures hang together: requests answered, the device never busier than the
    wall clock, filler a share of the rows run."""
    from benchmarks.batching_sim import run

    result = await run(clients=8, outside_s=0.01, seconds=0.5, bucketed=True, spread=True)
    assert result["requests_per_s"] > 0
    assert 0 < result["device_busy"] <= 1.0
    assert 0 <= result["filler_share"] < 1
    assert 1 <= result["texts_per_batch"] <= 8


def test_kernel_timeline_splits_device_time_per_pass(tmp_path: Path) -> None:
    """Two marked passes (µs): the first waits 100 for its first kernel and idles 300 between kernels; a
    kernel outside every pass is not counted, nor the profiler's copy of a mark on the GPU's timeline."""

    def kernel(ts: int, dur: int) -> dict[str, object]:
        return {"ph": "X", "cat": "kernel", "name": "gemm", "ts": ts, "dur": dur}

    events = [
        {"ph": "X", "cat": "user_annotation", "name": "pass 64x128", "ts": 0, "dur": 1000},
        {"ph": "X", "cat": "gpu_user_annotation", "name": "pass 64x128", "ts": 100, "dur": 800},
        kernel(100, 200),
        kernel(600, 300),
        {"ph": "X", "cat": "user_annotation", "name": "pass 96x128", "ts": 2000, "dur": 500},
        kernel(2000, 450),
        kernel(5000, 10),
    ]
    first, second = pass_stats({"traceEvents": events})
    assert first == {
        "shape": "64x128",
        "span": 1000.0,
        "kernels": 2,
        "busy": 500.0,
        "delay": 100.0,
        "idle": 300.0,
        "tail": 100.0,
        "gaps_over_50us": 1,
    }
    assert (second["shape"], second["busy"], second["delay"], second["tail"]) == ("96x128", 450.0, 0.0, 50.0)
    path = tmp_path / "trace.json"
    path.write_text(json.dumps({"traceEvents": events}))
    text = summary(path)
    assert "64x128" in text and "96x128" in text and "2 passes" in text


def test_the_gpu_results_plot_is_a_png(tmp_path: Path) -> None:
    import subprocess
    import sys

    levels = [{"concurrency": c, "tokens_per_s": 1000.0 * c, "p99_ms": 5.0 + c} for c in (1, 8, 32, 128, 256)]
    results = {
        "shape": "0.6b",
        "gpu": "test card",
        "date": "2026-11-26",
        "engine": {"shapes": {"256x128": 300_000}},
        "sentence_transformers": {"batch_256_tokens_per_s": 100_000},
        "server": {"load": levels},
    }
    (tmp_path / "gpu_results.json").write_text(json.dumps(results))
    out = tmp_path / "load.png"
    subprocess.run(
        [sys.executable, "benchmarks/plots.py", str(tmp_path / "gpu_results.json"), str(out)],
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_the_asgi_overhead_benchmark_measures_both_paths(tiny_qwen3: Path) -> None:
    import os
    import re
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "benchmarks/asgi_overhead.py", str(tiny_qwen3), "50"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = re.findall(r"fast lane (\d+) us a request; FastAPI route (\d+) us a request", done.stdout)
    assert len(lines) == 3 and all(int(lane) > 0 and int(route) > 0 for lane, route in lines)
