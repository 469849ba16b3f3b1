"""The benchmark scripts that read the server's own numbers: per-stage means from a /metrics scrape, and a
py-spy profile per thread. Wrong here, a diagnosis of the server would be wrong too."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from benchmarks.profile_summary import summarize
from benchmarks.server_process import server_process
from benchmarks.stage_times import stage_means
from embedserver.metrics import Metrics


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
