"""benchmarks/pass_trace.py and its hook: a process started with the hook records the batch worker's
overlapped passes as they run (here a scripted device whose passes take a known time), and the summary
reads the MLX thread's share of the time and the gaps from them."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from benchmarks import pass_trace

ROOT = Path(__file__).resolve().parent.parent

# 24 single-text requests in three waves of 8, through a worker whose "device" takes 20 ms a launch (on the
# MLX thread) and 5 ms more before its vectors can be read (on the collector thread).
_SCRIPT = textwrap.dedent(
    """
    import asyncio, gc, time
    from concurrent.futures import ThreadPoolExecutor
    import numpy as np
    from embedserver.batching.limits import BatchLimits
    from embedserver.batching.worker import BatchWorker
    from embedserver.metrics import Metrics

    def launch(batch):
        time.sleep(0.02)
        out = np.ones((len(batch), 4), dtype=np.float32)
        def collect():
            time.sleep(0.005)
            return out
        return collect

    async def main():
        limits = BatchLimits(max_size=8, max_tokens=4096, wait_s=0.002, max_queue=100)
        worker = BatchWorker("m", lambda b: launch(b)(), launch=launch, limits=limits, metrics=Metrics(),
                             executor=ThreadPoolExecutor(1))
        worker.start()
        for _ in range(3):
            futures = [worker.submit([np.array([1, 2, 3], dtype=np.int32)]) for _ in range(8)]
            await asyncio.gather(*futures)
        asyncio.get_running_loop().call_soon(time.sleep, 0.012)  # a callback that holds the loop 12 ms
        await asyncio.sleep(0.05)
        gc.collect()  # a full collection, which the probe's window records
        await asyncio.sleep(0.15)
        await worker.stop()
        time.sleep(0.5)  # the hook writes every 0.2 s

    asyncio.run(main())
    """
)


def test_a_traced_worker_records_every_pass_and_the_summary_reads_them(tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    env = {
        **os.environ,
        "PASS_TRACE": str(trace),
        "PYTHONPATH": os.pathsep.join([str(pass_trace.HOOK_DIR), str(ROOT)]),
    }
    done = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    events = pass_trace.read(trace)
    launches = [e for e in events if e[0] == "launch"]
    # Every text computed once; each pass cut, launched, and answered (its number shared by its events).
    assert sum(e[4] for e in launches) == 24
    assert {e[1] for e in launches} == {e[1] for e in events if e[0] == "answer"}
    assert len([e for e in events if e[0] == "cut"]) == len(launches)
    (start, end), *_ = pass_trace.levels(events, pause_s=1.0)
    summary = pass_trace.summarize(events, start, end)
    # Read from the events near the level only (what gpu_bench does), the summary is the same.
    near = pass_trace.summarize(pass_trace.Timeline(events).near(start, end), start, end)
    assert repr(near) == repr(summary)  # repr: NaN (no front-ends here) equals itself
    assert summary["passes"] == len(launches) >= 3
    assert summary["launch_mean_ms"] >= 19  # the scripted 20 ms
    assert 0 < summary["mlx_busy_percent"] <= 100
    assert summary["gap_mean_ms"] >= 0
    # The engine's loop: the callback that held it is named with its time, and the full collection counted.
    # (Other callbacks may pass the 4 ms mark on a busy machine too.)
    slept = [e for e in events if e[0] == "slow" and e[1] == "engine" and e[4] == "sleep"]
    assert len(slept) == 1 and slept[0][3] >= 0.012
    assert any(e[0] == "gc" and e[1] == "engine" and e[4][2] >= 1 for e in events)
    assert "sleep: 1 x 1" in pass_trace.slow_callbacks(events, "engine", 0, float("inf"), top=100)


def test_without_the_variable_the_hook_changes_nothing(tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if k != "PASS_TRACE"},
        "PYTHONPATH": os.pathsep.join([str(pass_trace.HOOK_DIR), str(ROOT)]),
    }
    probe = "import embedserver.batching.worker as w; print(w.BatchWorker._cut.__qualname__)"
    done = subprocess.run([sys.executable, "-c", probe], env=env, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "BatchWorker._cut"


def test_front_ends_record_each_embedding_calls_round_trip_to_the_engine(
    tiny_qwen3: Path, tmp_path: Path
) -> None:
    """The hook in a front-end: each embedding call's trip from the frame carrying it leaving to its answer
    arriving (pass_trace.summarize gives their mean a level as engine_trip_ms); and the engine's and the
    front-end's event loops probed for lag."""
    import time

    import httpx

    from embedserver_testing.server_process import server_process

    trace = tmp_path / "trace.jsonl"
    env = {
        "MODEL_NAME": str(tiny_qwen3),
        "HTTP_WORKERS": "1",
        "LOG_LEVEL": "WARNING",
        "HF_HUB_OFFLINE": "1",
        "PASS_TRACE": str(trace),
        "PYTHONPATH": os.pathsep.join([str(pass_trace.HOOK_DIR), str(ROOT)]),
    }
    with server_process(env, tmp_path / "server.log", cwd=ROOT) as (url, _):
        took = []
        for k in range(3):
            started = time.perf_counter()
            answer = httpx.post(f"{url}/v1/embeddings", json={"input": f"text number {k}"}, timeout=30)
            took.append(time.perf_counter() - started)
            assert answer.status_code == 200
        time.sleep(0.5)  # the hook writes every 0.2 s
    events = pass_trace.read(trace)
    trips = [e for e in events if e[0] == "engine_trip"]
    assert len(trips) == 3  # one a call, each shorter than its request at the client
    assert all(0 < trip < request for (_, _, trip), request in zip(trips, took, strict=True))
    # Each call's wait for its frame (one call a frame here: the requests came one at a time).
    dispatched = [e for e in events if e[0] == "dispatch"]
    assert [e[2] for e in dispatched] == [1, 1, 1] and all(0 <= e[3] < 0.1 for e in dispatched)
    # Both processes' event loops were probed for lag throughout.
    for role in ("engine", "frontend"):
        windows = [e for e in events if e[0] == "loop_lag" and e[1] == role]
        assert windows and all(
            ticks > 0 and 0 <= total <= ticks * largest for _, _, _, ticks, total, largest in windows
        )
        assert pass_trace.loop_lag(events, role, windows[0][2], windows[-1][2]) >= 0
    # The summary has the link's figures whether or not passes overlapped (they do not on CPU).
    summary = pass_trace.summarize(events, trips[0][1] - 1, trips[-1][1] + 1)
    assert {"engine_trip_ms", "engine_loop_lag_ms", "frontend_loop_lag_ms"} <= set(summary)
    assert 0 < summary["engine_trip_ms"] < max(took) * 1e3


# The same records for passes a model's own process runs (MODEL_PROCESS), here the tiny model on this CPU with
# passes launched and collected there as on a GPU.
_MODEL_PROCESS_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys, time
    from concurrent.futures import ThreadPoolExecutor
    from embedserver.batching.limits import BatchLimits
    from embedserver.batching.worker import BatchWorker
    from embedserver.catalog import ModelSpec
    from embedserver.metrics import Metrics
    from embedserver.runtime.model_files import resolve_source
    from embedserver.server.model_process import start_model_process
    from embedserver.settings import Settings

    async def main():
        spec = ModelSpec(name="m", source=sys.argv[1])
        model = start_model_process(Settings(_env_file=None), spec, resolve_source(spec.source))
        model._overlap = True
        limits = BatchLimits(max_size=8, max_tokens=4096, wait_s=0.002, max_queue=100)
        worker = BatchWorker("m", None, passes=model, limits=limits, metrics=Metrics(),
                             executor=ThreadPoolExecutor(1))
        worker.start()
        ids = model.tokenizer.encode_batch([f"text {i}" for i in range(24)])
        await asyncio.gather(*(worker.submit([seq]) for seq in ids))  # three passes of 8, overlapped
        await worker.stop()
        await model.aclose()
        time.sleep(0.5)  # the hook writes every 0.2 s

    asyncio.run(main())
    """
)


def test_passes_in_a_models_own_process_are_recorded_as_the_engine_sees_them(
    tmp_path: Path, tiny_qwen3: Path
) -> None:
    trace = tmp_path / "trace.jsonl"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PASS_TRACE": str(trace),
        "PYTHONPATH": os.pathsep.join([str(pass_trace.HOOK_DIR), str(ROOT)]),
    }
    done = subprocess.run(
        [sys.executable, "-c", _MODEL_PROCESS_SCRIPT, str(tiny_qwen3)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    events = pass_trace.read(trace)
    launches = [e for e in events if e[0] == "launch"]
    assert sum(e[4] for e in launches) == 24
    assert {e[1] for e in launches} == {e[1] for e in events if e[0] == "answer"}
    # A pass queued there (not run whole, as one with nothing before or after it is) is collected once.
    queued = {e[1] for e in launches if not e[7]}
    assert queued and [e[1] for e in events if e[0] == "collect"] == sorted(queued)
