"""The benchmark tools that read the server's own numbers: per-stage means from a /metrics scrape, a py-spy
profile per thread, a kernel timeline per pass. Wrong here, a diagnosis of the server would be wrong too.
The scripts in benchmarks/ are run as a user runs them (`python -m benchmarks.NAME`), never imported."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from benchmarks import pass_trace
from embedserver.metrics import Metrics
from embedserver_testing.server_process import server_process
from embedserver_testing.stage_times import level_means, stage_means

ROOT = Path(__file__).resolve().parent.parent


def test_stage_means_average_each_histogram_over_every_model() -> None:
    metrics = Metrics()
    metrics.inference_seconds.labels("a").observe(0.020)
    metrics.inference_seconds.labels("b").observe(0.040)
    metrics.inference_seconds.labels("b").observe(0.060)
    metrics.batch_size.labels("a").observe(64)
    metrics.tokenize_seconds.labels("a").observe(0.002)
    means = stage_means(generate_latest(metrics.registry).decode())
    assert means["embedserver_inference_seconds"] == pytest.approx((3, 0.040))
    assert means["embedserver_batch_size"] == (1, 64)
    assert means["embedserver_tokenization_seconds"] == pytest.approx((1, 0.002))
    assert "embedserver_queue_wait_seconds" not in means  # nothing observed: no mean


def test_stage_means_since_an_earlier_scrape_cover_what_came_between() -> None:
    metrics = Metrics()
    metrics.inference_seconds.labels("a").observe(0.500)
    earlier = generate_latest(metrics.registry).decode()
    metrics.inference_seconds.labels("a").observe(0.004)
    metrics.inference_seconds.labels("b").observe(0.006)
    means = stage_means(generate_latest(metrics.registry).decode(), since=earlier)
    assert means["embedserver_inference_seconds"] == pytest.approx((2, 0.005))
    assert stage_means(earlier, since=earlier) == {}
    assert level_means(generate_latest(metrics.registry).decode(), since=earlier) == {"forward_mean_ms": 5.0}


def _run_benchmark(*args: str, timeout: float = 120) -> str:
    done = subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_profile_summary_shares_per_thread_and_counts_a_frame_once_per_stack(tmp_path: Path) -> None:
    raw = [
        "thread (0x1): mlx_0;run (a.py:1);f (b.py:2);f (b.py:2) 6",  # recursion: f counted once
        "thread (0x1): mlx_0;run (a.py:1);g (b.py:9) 2",
        "thread (0x2): MainThread;loop (c.py:3) 2",
    ]
    (tmp_path / "profile.raw").write_text("\n".join(raw) + "\n")
    text = _run_benchmark("benchmarks.profile_summary", str(tmp_path / "profile.raw"), "10")
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


def test_a_servers_answers_are_compared_with_the_model_alone(tiny_qwen3: Path, tmp_path: Path) -> None:
    """gpu_bench's check of each server's answers: the least cosine between its vectors (the texts one a request
    and all in one) and the model alone's for the same texts; one wrong vector pulls it down."""
    import numpy as np

    from benchmarks.server_answers import cosine_min
    from embedserver.catalog import ModelSpec
    from embedserver.runtime.loader import load_runner

    texts = ["a short query", "a longer passage about what an embedding server does with many texts", "x"]
    runner = load_runner(ModelSpec(name="tiny", source=str(tiny_qwen3)))
    reference = runner.embed(runner.tokenizer.encode_batch(texts))
    wrong = reference.copy()
    wrong[1] = np.random.default_rng(0).standard_normal(reference.shape[1])
    env = {"MODEL_NAME": str(tiny_qwen3), "HF_HUB_OFFLINE": "1", "LOG_LEVEL": "WARNING", "HTTP_WORKERS": "0"}
    with server_process(env, tmp_path / "server.log", timeout=120) as (url, _):
        assert min(cosine_min(url, texts, reference).values()) > 0.9999
        wrong_paths = cosine_min(url, texts, wrong)
        assert set(wrong_paths) == {"alone", "together"}
        assert max(wrong_paths.values()) < 0.5


def test_kernel_timeline_splits_device_time_per_pass(tmp_path: Path) -> None:
    """Two marked passes (µs): the first waits 100 for its first kernel and idles 300 between kernels; a
    kernel outside every pass is not counted, nor the profiler's copy of a mark on the GPU's timeline."""

    def kernel(ts: int, dur: int, name: str = "gemm") -> dict[str, object]:
        return {"ph": "X", "cat": "kernel", "name": name, "ts": ts, "dur": dur}

    events = [
        {"ph": "X", "cat": "user_annotation", "name": "pass 64x128", "ts": 0, "dur": 1000},
        {"ph": "X", "cat": "gpu_user_annotation", "name": "pass 64x128", "ts": 100, "dur": 800},
        kernel(100, 200),
        kernel(600, 300, "rms_norm"),
        {"ph": "X", "cat": "user_annotation", "name": "pass 96x128", "ts": 2000, "dur": 500},
        kernel(2000, 450),
        kernel(5000, 10),
        # host calls: two launches in the first pass, one graph launch in the second, one outside any pass
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": 10, "dur": 6},
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": 500, "dur": 4},
        {"ph": "X", "cat": "cuda_driver", "name": "cuGraphLaunch", "ts": 2100, "dur": 30},
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": 4000, "dur": 1000},
    ]
    path = tmp_path / "trace.json"
    path.write_text(json.dumps({"traceEvents": events}))
    lines = _run_benchmark("benchmarks.kernel_timeline", "summary", str(path)).splitlines()
    assert "(2 passes; ms, means)" in lines[0]
    # shape, passes, kernels, then means in ms of span, busy, delay, idle, tail; gaps over 50 µs
    rows = {line.split()[0]: line.split() for line in lines[2:5]}
    assert rows["64x128"] == ["64x128", "1", "2", "1.00", "0.50", "0.10", "0.30", "0.10", "1.0"]
    assert rows["96x128"] == ["96x128", "1", "1", "0.50", "0.45", "0.00", "0.00", "0.05", "0.0"]
    assert rows["all"][:3] == ["all", "2", "2"]
    # the CUDA calls made inside passes, per pass: count and µs, most time first
    api = lines.index("CUDA API calls inside passes (per pass: count, µs; 2 passes):")
    assert [line.split() for line in lines[api + 1 : api + 3]] == [
        ["0.5", "15.0", "cuGraphLaunch"],
        ["1.0", "5.0", "cudaLaunchKernel"],
    ]
    # every kernel of the trace by total time: count, mean µs, share of all kernel time, name
    top = lines[lines.index("top kernels (count, mean µs, share of kernel time):") + 1 :]
    assert [line.split() for line in top] == [
        ["3", "220.0", "68.8%", "gemm"],
        ["1", "300.0", "31.2%", "rms_norm"],
    ]


def test_kernel_timeline_tells_a_custom_kernels_instantiations_apart() -> None:
    from benchmarks.kernel_timeline import kernel_label

    mlx = "mlx::core::cu::custom_kernel_embedserver_norm_matmul_bfloat16_t_t_1024_{}_f_64(__nv_bfloat16 const*, int)"
    assert kernel_label(mlx.format(4096)) == "embedserver_norm_matmul_bfloat16_t_t_1024_4096_f_64"
    assert kernel_label(mlx.format(3072)) != kernel_label(mlx.format(4096))
    assert (
        kernel_label("nvjet_sm90_tst_128x64_64x8_1x2_h_bx_TNT") == "nvjet_sm90_tst_128x64_64x8_1x2_h_bx_TNT"
    )
    assert len(kernel_label("void mlx::core::cu::gather<" + "x" * 200)) == 60


def test_the_gpu_results_plot_is_a_png(tmp_path: Path) -> None:
    levels = [{"concurrency": c, "tokens_per_s": 1000.0 * c, "p99_ms": 5.0 + c} for c in (1, 8, 32, 128, 256)]
    results = {
        "shape": "0.6b",
        "gpu": "test card",
        "date": "2026-11-26",
        "model": {"lengths": {"128": {"batch": 256, "tokens_per_s": 300_000}}},
        "sentence_transformers": {"lengths": {"128": {"texts_per_s": 800.0}}},
        "server": {"new": {"lengths": {"128": levels}}},
    }
    (tmp_path / "gpu_results.json").write_text(json.dumps(results))
    out = tmp_path / "load.png"
    _run_benchmark("benchmarks.plots", str(tmp_path / "gpu_results.json"), str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_the_asgi_overhead_benchmark_measures_both_paths(tiny_qwen3: Path) -> None:
    text = _run_benchmark("benchmarks.asgi_overhead", str(tiny_qwen3), "50")
    lines = re.findall(r"fast lane (\d+) us a request; FastAPI route (\d+) us a request", text)
    assert len(lines) == 3 and all(int(lane) > 0 and int(route) > 0 for lane, route in lines)


def test_the_engine_overhead_benchmark_answers_every_request(tiny_qwen3: Path) -> None:
    """Every request it sends comes back through the engine's real link, cache, admission and batching, and it
    reports the event loop's own CPU per request."""
    text = _run_benchmark("benchmarks.engine_overhead", str(tiny_qwen3), "600", "64", "16")
    line = re.search(
        r"600 requests of 1 x 16 tokens, 64 in flight: .* (\d+) µs of the event loop's CPU", text
    )
    assert line is not None and int(line.group(1)) > 0, text


def test_process_cost_gives_each_process_its_cpu_per_request(tiny_qwen3: Path) -> None:
    text = _run_benchmark(
        "benchmarks.process_cost", str(tiny_qwen3), "--clients", "4", "--seconds", "1", "LOG_LEVEL=WARNING"
    )
    served = re.search(r"^(\d+) requests in 1 s .* 0 errors$", text, re.M)
    assert served is not None and int(served.group(1)) > 0, text
    costs = dict(re.findall(r"^ *(engine|front-end 1): .* ([\d.]+) µs a request$", text, re.M))
    assert set(costs) == {"engine", "front-end 1"} and all(float(cost) > 0 for cost in costs.values()), text


def test_paired_latency_gives_each_tree_its_latency_and_the_paired_difference(tiny_qwen3: Path) -> None:
    """Two servers from the same tree: each answers every request it is sent (the paired rounds after the
    warm-up tenth), and both get latencies, so the difference is a number, not a failed request."""
    text = _run_benchmark(
        "benchmarks.paired_latency", str(tiny_qwen3), ".", str(ROOT), "--requests", "30", timeout=180
    )
    p50s = re.findall(r"^ *(\S+): p50 ([\d.]+) ms, p90 ([\d.]+) ms$", text, re.M)
    assert [tree for tree, *_ in p50s] == [".", str(ROOT)], text
    assert all(0 < float(p50) <= float(p90) for _, p50, p90 in p50s), text
    assert re.search(r"B - A, paired: median [+-][\d.]+ ms over 27 rounds$", text, re.M), text


def test_pass_ab_alternates_two_trees_and_gives_each_shape_their_ratio(tiny_qwen3: Path) -> None:
    """The same tree as A and B, two rounds: every shape gets a pass time a round from each, in the order run,
    and B's median over A's."""
    text = _run_benchmark(
        "benchmarks.pass_ab", str(tiny_qwen3), ".", str(ROOT), "--rounds", "2", "1x16", "3x40", timeout=240
    )
    rows = re.findall(r"^ +(\d+x\d+) +([\d.]+) ([\d.]+) +([\d.]+) ([\d.]+) +([\d.]+)$", text, re.M)
    assert [row[0] for row in rows] == ["1x16", "3x40"], text
    for _, *times, ratio in rows:
        a1, a2, b1, b2 = map(float, times)
        assert min(a1, a2, b1, b2) > 0
        assert float(ratio) == pytest.approx(((b1 + b2) / 2) / ((a1 + a2) / 2), abs=0.002)


def test_pass_phases_time_each_phase_of_a_pass_plain_and_compiled(tiny_qwen3: Path) -> None:
    text = _run_benchmark("benchmarks.pass_phases", str(tiny_qwen3), "1x16", "3x40")
    rows = re.findall(r"^(plain|compiled) +(\d+)x(\d+) +(.*) ms ", text, flags=re.M)
    assert [(mode, int(r), int(n)) for mode, r, n, _ in rows] == [
        ("plain", 1, 16),
        ("plain", 3, 40),
        ("compiled", 1, 16),
        ("compiled", 3, 40),
    ], text
    for *_, cells in rows:
        ms = dict(zip(cells.split()[::2], map(float, cells.split()[1::2]), strict=True))
        assert set(ms) == {"prep", "build", "eval", "read", "total"}
        # Each pass's total holds its eval, so their medians keep that order.
        assert ms["total"] >= ms["eval"] > 0 and min(ms.values()) >= 0


@pytest.mark.slow
def test_the_gpu_benchmark_runs_end_to_end_on_any_device(tiny_qwen3: Path, tmp_path: Path) -> None:
    """The one-command GPU benchmark also runs where there is no GPU (nor sentence-transformers): the model
    alone and the server with its defaults, on unique texts of exactly the asked length."""
    printed = _run_benchmark(
        "benchmarks.gpu_bench",
        *("--out", str(tmp_path), "--model", str(tiny_qwen3), "--skip", "st"),
        *("--lengths", "16,mixed", "--concurrency", "1,4", "--duration", "1"),
        timeout=300,
    )
    results = json.loads((tmp_path / "gpu_results.json").read_text())
    # The summary splits each level's server time (one process here: no engine share, no link).
    row = re.search(
        r"^ +server +16 +4 +[\d,]+ +[\d,]+ +[\d.]+ +[\d.]+ +([\d.]+) +- +- +([\d.]+) +([\d.]+) ",
        printed,
        re.M,
    )
    assert row is not None, printed
    server, queue, forward = map(float, row.groups())
    assert server >= forward > 0 and queue >= 0
    # Against the run's baselines: no sentence-transformers here ("-"), the model alone's share a number.
    against = re.search(r"^ +server +16 +4 .* (\S+) +(\S+)$", printed, re.M)
    assert against is not None and against.group(1) == "-" and float(against.group(2)) > 0, printed
    assert set(results["model"]["lengths"]) == {"16", "mixed"}
    assert all(
        m["one_text_ms"] > 0 and m["one_text_spaced_ms"] > 0 for m in results["model"]["lengths"].values()
    )
    # The host and the code are named: this machine's CPUs, no GPU, and this tree's sources.
    from benchmarks.host_facts import sources_digest

    assert results["host"]["cpus"] == os.cpu_count() and results["gpu"] == "none"
    assert results["server"]["server"]["sources"] == sources_digest(ROOT)
    assert "commit" in results["server"]["server"]
    # The server's answers for the model alone's first texts, alone and in one request, are its vectors
    # (float32 on CPU: equal to rounding).
    assert results["server"]["server"]["answers_vs_model_cosine_min"] > 0.9999
    assert set(results["server"]["server"]["answers_vs_model_cosine"]) == {"alone", "together"}
    assert "answers against the model alone: cosine >= " in printed
    levels = results["server"]["server"]["lengths"]["16"]
    assert [level["concurrency"] for level in levels] == [1, 4]
    for level in levels:
        assert level["requests"] > 0 and level["errors"] == 0 and level["repeats"] == 0
        assert level["tokens_per_s"] == pytest.approx(16 * level["requests_per_s"], rel=0.01)
        # The machine was busy (the server and the clients at least), and the load generator's own CPU is
        # counted although its processes have exited.
        assert 0 < level["host_cpu_percent"] <= 100 and level["busiest_client_cpu_percent"] > 0
        assert 0 <= level["host_steal_percent"] <= level["host_cpu_percent"]
        # The census saw the busy server: its engine process's event loop among the threads.
        assert any(name.endswith("[main]") and "embedserver" in name for name in level["cpu_percent"])
    # The console names the busiest few threads a level; the file keeps them all.
    lines = [line for line in printed.splitlines() if "server server, 16 tokens:" in line]
    assert len(lines) == 2 and all(
        "busiest_cpu_percent" in line and "'cpu_percent'" not in line for line in lines
    )


def test_the_model_alone_back_to_back_queues_each_pass_before_reading_the_last() -> None:
    """gpu_bench's sustained rate: every pass launched once, and pass k + 1 launched before pass k is read, as
    the engine's batch worker runs them; each pass read once, in order."""
    from benchmarks.gpu_bench import back_to_back

    events: list[str] = []

    class Runner:
        def launch(self, batch: list[object]) -> object:
            n = sum(e.startswith("launch") for e in events)
            events.append(f"launch {n}")
            return lambda: events.append(f"read {n}")

    back_to_back(Runner(), [], 4)
    assert events == ["launch 0", "launch 1", "read 0", "launch 2", "read 1", "launch 3", "read 2", "read 3"]


@pytest.mark.slow
def test_the_gpu_benchmark_alternates_servers_level_by_level(tiny_qwen3: Path, tmp_path: Path) -> None:
    """Two servers run side by side and take each level in turn, the order reversed in the second round, so a
    host's drift during the run touches both alike; each round is reported under its own name. With two
    answer parsers for the load generator, each server takes each level once with each."""
    printed = _run_benchmark(
        "benchmarks.gpu_bench",
        *("--out", str(tmp_path), "--model", str(tiny_qwen3), "--skip", "model,st", "--rounds", "2"),
        *("--server", "a=", "--server", "b=,MAX_BATCH_SIZE=8", "--trace", "a", "--parsers", "orjson,json"),
        *("--lengths", "16", "--concurrency", "1,2", "--duration", "0.6", "--warmup", "0.4"),
        timeout=300,
    )
    # Each server is loaded once before the first level, at the first length and the most clients.
    warmed = re.findall(r"server (\S+): warmed up with 2 clients of 16 tokens, not recorded", printed)
    assert warmed == ["a", "b"] and printed.index("warmed up") < printed.index("16 tokens: {"), printed
    order = re.findall(r"server (\S+), 16 tokens:.*'client_parser': '(\w+)'", printed)
    first = [("a", "orjson"), ("a", "json"), ("b", "orjson"), ("b", "json")]
    assert order == first * 2 + first[::-1] * 2, printed
    results = json.loads((tmp_path / "gpu_results.json").read_text())["server"]
    assert set(results) == {f"{s}{p}{r}" for s in "ab" for p in ("", "+json") for r in ("", ".2")}
    assert results["b.2"]["env"] == {"MAX_BATCH_SIZE": "8"} and results["a"]["env"] == {}
    for name, server in results.items():
        levels = server["lengths"]["16"]
        assert [level["concurrency"] for level in levels] == [1, 2]
        assert all(level["requests"] > 0 and level["errors"] == 0 for level in levels)
        assert {level["client_parser"] for level in levels} == {"json" if "+json" in name else "orjson"}
        # --trace a: that server recorded its batches (passes overlap on CUDA only, so here only the cuts),
        # the other did not.
        assert all(("passes" in level) == name.startswith("a") for level in levels)
    assert any(event[0] == "cut" for event in pass_trace.read(tmp_path / "trace-a.jsonl"))
    assert not (tmp_path / "trace-b.jsonl").exists()
    # Each server drained and exited cleanly on SIGTERM (0, or the signal uvicorn re-raises), not aborted.
    from benchmarks.gpu_bench import CLEAN_EXITS

    statuses = {name: server["exit_status"] for name, server in results.items()}
    assert all(status in CLEAN_EXITS for status in statuses.values()), statuses
    for name in ("a", "b"):
        # The servers' defaults, the access log's line a request included.
        assert "embedserver.access: POST /v1/embeddings 200" in (tmp_path / f"server-{name}.log").read_text()


def test_the_load_generator_variants_spread_clients_and_name_results() -> None:
    """gpu_bench's load clients: `auto` runs 32 clients a process, at most 8 processes (as every earlier figure
    was taken); a number runs that many a process, up to the host's cores; every parser meets every setting,
    and a result's name says where its client differs from the first."""
    from benchmarks.gpu_bench import LoadClient, _result_name, load_clients

    cores = os.cpu_count() or 1
    auto, sixteen = LoadClient(), LoadClient(per_process=16)
    assert [auto.processes(c) for c in (1, 32, 256, 512)] == [1, 1, 8, 8]
    expected = [1, min(2, cores), min(2, cores), min(16, cores)]
    assert [sixteen.processes(c) for c in (1, 20, 32, 256)] == expected
    clients = load_clients("orjson,json", "auto,16")
    assert clients == (auto, sixteen, LoadClient("json"), LoadClient("json", 16))
    names = [_result_name("main", round_, client, clients) for round_ in (1, 2) for client in clients]
    assert names == [
        *("main", "main+c16", "main+json", "main+json+c16"),
        *("main.2", "main+c16.2", "main+json.2", "main+json+c16.2"),
    ]
    assert [_result_name("x", 1, c, clients[1:]) for c in clients[1:]] == ["x", "x+json+cauto", "x+json"]


def test_gpu_busy_samples_nvidia_smi_while_the_block_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gpu_bench's per-level GPU busy share: nvidia-smi's utilization sampled with the time of each sample, so
    a level averages only what ran under load; nothing (not an error) on a machine without nvidia-smi."""
    from benchmarks.gpu_bench import gpu_busy

    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 42\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    started = time.perf_counter()
    with gpu_busy() as samples:
        time.sleep(1.0)
    assert len(samples) >= 2
    assert all(percent == 42.0 and started < at < time.perf_counter() for at, percent in samples)

    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    with gpu_busy() as samples:
        time.sleep(0.4)
    assert samples == []


def test_kernel_registers_builds_each_kernel_as_mlx_declares_it() -> None:
    from benchmarks import kernel_registers

    found = {case.label: case for case in kernel_registers.cases("0.6b")}
    assert set(found) >= {"grouped_attention L=16", "grouped_attention L=128", "qk_norm_rope", "swiglu"}
    rope = kernel_registers.kernel_source(found["qk_norm_rope"])
    # Inputs, a `_shape` where the body reads one, outputs, then the template arguments as constants.
    assert "const __nv_bfloat16* qkv,\n    const __grid_constant__ Shape qkv_shape," in rope
    assert "q_weight_shape" not in rope and "__nv_bfloat16* k) {" in rope
    assert "using T = __nv_bfloat16;" in rope and "constexpr int KV = 8;" in rope
    grouped = kernel_registers.kernel_source(found["grouped_attention L=128"])
    assert "Shape" not in grouped.split("__global__")[1].split(") {")[0]
    assert "constexpr bool BF16 = true;" in grouped and "constexpr int L = 128;" in grouped
    # The header, the kernel's file included, comes first; the body calls its device function.
    assert '/cuda/grouped_attention.cuh"' in grouped.split("__global__")[0]
    assert "embedserver_grouped_attention<T, BF16, H, KV, D, L>(" in grouped.split("__global__")[1]


def test_kernel_registers_reads_ptxas_report() -> None:
    from benchmarks.kernel_registers import parse_ptxas

    log = (
        "ptxas info    : Compiling entry function 'kernel' for 'sm_90a'\n"
        "ptxas         .     208 bytes stack frame, 104 bytes spill stores, 96 bytes spill loads\n"
        "ptxas info    : Used 255 registers, used 1 barriers, 208 bytes cumulative stack size\n"
    )
    assert parse_ptxas(log) == {
        "registers": 255,
        "spill_stores": 104,
        "spill_loads": 96,
        "stack": 208,
        "shared": 0,
    }


def test_launch_parallel_launches_beside_spinning_processes(tiny_qwen3: Path) -> None:
    """--spin N: the same launches measured again with N other processes running Python meanwhile (what busy
    cores cost the host's share of a pass); one line per setting, each with passes counted."""
    args = ["--threads", "1", "--spin", "0,1", "--pin", "none,apart", "--seconds", "0.3"]
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.launch_parallel", str(tiny_qwen3), "1x16", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stdout.splitlines() if "passes/s" in line]
    assert [line.split("  ")[0] for line in lines] == [
        "threads 1",
        "threads 1 pin apart",
        "threads 1 spin 1",
        "threads 1 spin 1 pin apart",
    ]
    rates = [re.search(r"([\d.]+) passes/s", line) for line in lines]
    assert all(rate is not None and float(rate.group(1)) > 0 for rate in rates)


def test_launch_parallel_places_the_launcher_on_a_core_of_its_own_or_beside_the_spinners() -> None:
    from benchmarks.host_facts import core_of
    from benchmarks.launch_parallel import _placement

    cpus = {0, 1, 2, 3}
    assert _placement("none", cpus) == (cpus, cpus)
    own = core_of(0) & cpus
    assert _placement("apart", cpus) == (own, cpus - own)
    assert _placement("beside", cpus) == ({0}, {1, 2, 3})
    assert _placement("apart", {5}) == ({5}, {5})  # one CPU: the spinners share it


@pytest.mark.parametrize(("listed", "expected"), [("0,8\n", {0, 8}), ("0-1\n", {0, 1}), ("0\n", {0})])
def test_a_cpus_core_is_its_smt_siblings(tmp_path: Path, listed: str, expected: set[int]) -> None:
    from benchmarks.host_facts import core_of

    (tmp_path / "cpu0" / "topology").mkdir(parents=True)
    (tmp_path / "cpu0" / "topology" / "thread_siblings_list").write_text(listed)
    assert core_of(0, tmp_path) == expected
    assert core_of(3, tmp_path) == {3}  # a CPU the kernel says nothing about: a core alone


def test_start_cost_times_each_warmed_shape_once_and_sums_them_by_length(
    tiny_qwen3: Path, tmp_path: Path
) -> None:
    """On CPU the warm-up runs one shape (1 x 16): one first pass, timed against one more of the same shape."""
    out = tmp_path / "start.json"
    text = _run_benchmark("benchmarks.start_cost", str(tiny_qwen3), "--json", str(out))
    result = json.loads(out.read_text())
    assert result["shapes"] == 1 and [(s["rows"], s["length"]) for s in result["slowest"]] == [(1, 16)]
    assert result["by_length"]["16"]["shapes"] == 1
    assert result["by_length"]["16"]["first_s"] == pytest.approx(result["first_passes_s"], abs=0.002)
    assert result["load_s"] > 0 and result["ready_s"] >= result["first_passes_s"]
    assert re.search(r"^ +16 +1 +[\d.]+ +[\d.]+$", text, re.M), text


def test_lone_pass_times_the_same_pass_on_the_main_thread_and_on_the_mlx_thread(tiny_qwen3: Path) -> None:
    """The placements asked for run, alternating, each in a process of its own; the MLX thread's pass is also
    timed as its event loop waits for it, which includes the pass. Pinned, each placement reports the CPUs it
    ran on."""
    cpu = min(os.sched_getaffinity(0))
    args = ["--tokens", "16", "--passes", "5", "--rounds", "2", "--cpus", str(cpu), "--loop-cpus", str(cpu)]
    args += ["--placements", "main,mlx,spin"]
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.lone_pass", str(tiny_qwen3), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr
    rounds = re.findall(r"round (\d), (\w+): pass p50", run.stdout)
    assert rounds == [("1", "main"), ("1", "mlx"), ("1", "spin"), ("2", "spin"), ("2", "mlx"), ("2", "main")]
    result = json.loads(run.stdout.splitlines()[-1])
    assert result["cpus"] == [cpu] and result["loop_cpus"] == [cpu] and result["tokens"] == 16
    assert result["host"]["cpus"] == os.cpu_count()
    for entry in result["runs"]:
        assert entry["pass_p50_ms"] > 0
        if entry["placement"] == "mlx":
            assert entry["wait_p50_ms"] >= entry["pass_p50_ms"]
        assert entry["ran_on"] == [cpu]


def test_cpu_lists_and_the_gpus_sysfs_device() -> None:
    from benchmarks.cpu_census import cpu_set
    from benchmarks.host_facts import cpu_text, pci_device

    assert cpu_set("0-3,8,10-11\n") == {0, 1, 2, 3, 8, 10, 11}
    assert cpu_set("5") == {5} and cpu_set("") == set()
    assert (
        cpu_text({0, 1, 2, 3, 8, 10, 11}) == "0-3,8,10-11" and cpu_text({5}) == "5" and cpu_text(set()) == ""
    )
    assert cpu_set(cpu_text(set(range(0, 64, 3)) | {1, 2})) == set(range(0, 64, 3)) | {1, 2}
    assert pci_device("00000000:1B:00.0") == Path("/sys/bus/pci/devices/0000:1b:00.0")
