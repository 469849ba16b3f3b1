"""GPU benchmark in one command: the model alone, sentence-transformers, and the server with its defaults under
concurrent HTTP load, on the same weights and texts, for short queries, 128- and 512-token passages and a
mixed workload. Every request is one text never sent before (the cache never answers).

    python -m benchmarks.gpu_bench --out results/ [--shape 0.6b] [--model DIR] [--duration 10]
        [--lengths 16,128,512,mixed] [--concurrency 1,32,256,512] [--skip model,st,server]
        [--server NAME=PATH[,SETTING=VALUE...] ...] [--env SETTING=VALUE ...] [--rounds R] [--trace [NAME,...]]
        [--parsers orjson,json] [--clients-per-process auto,16] [--warmup 3]

The model alone runs a full batch a pass at a time (what a lone batch waits; the server's `% model` column
is against it) and back to back with the next pass queued before the running one is read, as the engine runs
passes under load on CUDA (`tokens_per_s_overlapped`: what the engine sustains; elsewhere the engine runs a
pass at a time and the two figures are one), and one text: back to back (`one_text_ms`) and a new text each
1 ms after the last pass, as a lone client's come (`one_text_spaced_ms`).

Random weights of the chosen shape are written under --work once; --model runs a model directory of your own
instead. --server runs the server from a source tree (PATH put first on PYTHONPATH), with settings of its
own, so trees and settings are compared in the same run: `--server old=/src/old --server new=.
--server new2=.,HTTP_WORKERS=2`. The servers run side by side (each holds its own device memory) and take each
level in turn; --rounds R repeats all levels R times, the servers' order reversed every other round, so the
host's drift over the run touches every server alike (round R > 1 of NAME is reported as NAME.R). --env adds
a server setting for every server run. For each level: requests/s, tokens/s, p50/p99 at the client, the
server's own stage means from /metrics over that level, and the GPU's peak memory (nvidia-smi) while the
server ran. --trace adds each level's passes as the server's MLX thread saw them (their rate, its busy share,
the gaps between launches: benchmarks/pass_trace.py); --trace NAME records only that server's, so it runs
beside an untraced copy (on two H100 hosts the recording cost no more than two copies of one tree differ by).
Before its levels each server embeds a few of the texts the model alone embedded, one a request and all in
one, and its least cosine against the model alone's vectors is reported (benchmarks/server_answers.py): a
faster figure from a path that computes something else shows there. Before its first level each server takes
--warmup seconds (3 by default) of load at the first length and the most clients, not recorded. The load
generator reads answers with orjson, and runs 32 clients a process, at most 8 processes (`auto`); --parsers
orjson,json runs each level a second time with the standard library's parser (reported as NAME+json), which
costs the shared host ~8x the CPU an answer, and --clients-per-process auto,16 a second time with 16 clients a
process, as many processes as that takes up to the host's cores (NAME+c16): a load generator that answers its
clients late lengthens every request's cycle, and a closed loop's requests/s with it.
Results name the host (its CPU and how its CPUs sit around the GPU, the driver, the packages:
benchmarks/host_facts.py), each server's commit and a digest of its sources (copies of one tree share it),
and for each level the share of the CPUs a hypervisor gave to others. Results: OUT/gpu_results.json, and a
table on stdout.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import re
import signal
import subprocess
import threading
import time
import zlib
from collections.abc import Callable, Collection, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import pass_trace
from benchmarks.cpu_census import busiest, machine_shares, machine_ticks, threads_now
from benchmarks.host_facts import host_facts, host_line, tree_code
from benchmarks.loadgen import run_load
from benchmarks.server_answers import cosine_min
from embedserver_testing.python_path import first_on_path
from embedserver_testing.random_model import write_random_qwen3
from embedserver_testing.server_process import server_process
from embedserver_testing.stage_times import level_means

# The mixed workload: three short queries for each passage.
MIXED = ((16, 3), (256, 1))


def log(*parts: Any) -> None:
    print(time.strftime("%H:%M:%S"), *parts, flush=True)


def make_texts(tokenizer_path: Path, n: int, tokens: int, seed: int = 0) -> list[str]:
    """`n` random texts of exactly `tokens` tokens with the appended <|endoftext|>: words that are each one
    token of the vocabulary with their leading space (" word"), which the byte-level pre-tokenizer keeps whole,
    so a text of k such words is k tokens. Random draws from tens of thousands of words: never the same text."""
    vocab = json.loads(tokenizer_path.read_text())["model"]["vocab"]
    words = sorted(token[1:] for token in vocab if re.fullmatch("\u0120[a-z]{3,12}", token))
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(words), size=(n, tokens - 1))
    return ["".join(" " + words[i] for i in row) for row in picks]


def workload_texts(tokenizer: Path, length: str, n: int, seed: int) -> list[str]:
    """Texts for one workload: `length` tokens each, or the mixed query/passage workload (MIXED)."""
    if length != "mixed":
        return make_texts(tokenizer, n, int(length), seed)
    out: list[str] = []
    for index, (tokens, share) in enumerate(MIXED):
        out += make_texts(tokenizer, n * share // sum(s for _, s in MIXED) + 1, tokens, seed * 10 + index)
    order = np.random.default_rng(seed).permutation(len(out))
    return [out[i] for i in order[:n]]


# The most tokens/s a level is given texts for: several times what one GPU computes for the 0.6B model.
_TOKENS_PER_S = 2_000_000


def level_texts(length: str, clients: int, seconds: float) -> int:
    """How many texts a load level may need: ~110 requests/s a client, up to 40k requests/s and _TOKENS_PER_S
    (a fast host served more than 20k requests/s of 16-token texts from 512 clients, where the earlier cap of
    14k requests/s made a third of them repeats, answered by the cache); a level that sends more than this
    repeats texts, and says so (`repeats`)."""
    tokens = (
        sum(t * share for t, share in MIXED) / sum(s for _, s in MIXED) if length == "mixed" else int(length)
    )
    rate = min(clients * 110, 40_000, _TOKENS_PER_S / tokens)
    return int(rate * seconds) + 2000


def timed(fn: Any, repeat: int = 5, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


# The first workload's texts whose vectors are compared: the model alone's with sentence-transformers' and with
# each server's answers.
_CHECKED_TEXTS = 8


def checked_texts(texts: dict[str, list[str]]) -> list[str]:
    return texts[next(iter(texts))][:_CHECKED_TEXTS]


# Passes a `back_to_back` run queues; its time a pass is the model's sustained rate.
_STREAMED_PASSES = 8


def back_to_back(runner: Any, batch: list[np.ndarray], passes: int) -> None:
    """`passes` passes of `batch` as the engine's batch worker runs them under load: the next queued
    (`ModelRunner.launch`) before the running one is collected, so the host builds a pass while the device
    computes the last. A pass at a time (`embed`) also pays its graph's Python and its kernels' queueing
    before the device starts: what a lone batch waits, not what the engine sustains."""
    waiting = runner.launch(batch)
    for _ in range(passes - 1):
        following = runner.launch(batch)
        waiting()
        waiting = following
    waiting()


# A lone client's passes: each a new text, after a pause as long as its answer's way back and its next request's
# way in take.
_SPACED_PASSES = 100
_SPACED_GAP_S = 0.001


def spaced_passes(runner: Any, texts: list[np.ndarray], gap_s: float = _SPACED_GAP_S) -> float:
    """The median time of a pass of one text, each text in turn after `gap_s` with nothing running: what the
    model alone takes for a lone client, where `one_text_ms` runs one text back to back."""
    times = []
    for ids in texts:
        time.sleep(gap_s)
        started = time.perf_counter()
        runner.embed([ids])
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def bench_model(model_dir: Path, texts: dict[str, list[str]]) -> dict[str, Any]:
    """The model alone, as the server's defaults run it: batches of real texts and a lone text."""
    # Before MLX: on Linux CPU, MLX multiplies with the BLAS loaded before it (embedserver/tuning/blas.py).
    import embedserver.runtime  # noqa: F401  (readies the process for MLX: BLAS preload, MLX settings)
    from embedserver.catalog import ModelSpec
    from embedserver.runtime.device_policy import ready_for_device
    from embedserver.runtime.loader import load_runner
    from embedserver.server.engine_app import device_plan
    from embedserver.settings import Settings

    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    runner = load_runner(ModelSpec(name="bench", source=str(model_dir)))
    import mlx.core as mx

    # Readied as the server readies it: a lone text runs compiled (COMPILE=auto).
    ready_for_device(runner, device_plan(defaults))
    out: dict[str, Any] = {"device": str(mx.default_device()), "lengths": {}}
    for length, pool in texts.items():
        # As the engine gets them from its front-ends: int32 arrays, not lists of Python ints.
        encoded = [np.asarray(ids, dtype=np.int32) for ids in runner.tokenizer.encode_batch(pool[:256])]
        batch = 256 if length in ("16", "128", "mixed") else 64
        tokens = sum(map(len, encoded[:batch]))
        dt = timed(lambda e=encoded[:batch]: runner.embed(e))
        # Back to back only where the engine overlaps passes (CUDA); elsewhere it runs them one at a time.
        streamed = (
            timed(lambda e=encoded[:batch]: back_to_back(runner, e, _STREAMED_PASSES), repeat=3)
            / _STREAMED_PASSES
            if runner.overlap_passes
            else dt
        )
        one = timed(lambda e=encoded[:1]: runner.embed(e), repeat=20)
        spaced = spaced_passes(runner, encoded[:_SPACED_PASSES])
        out["lengths"][length] = {
            "batch": batch,
            "tokens_per_s": round(tokens / dt),
            "tokens_per_s_overlapped": round(tokens / streamed),
            "texts_per_s": round(batch / dt, 1),
            "one_text_ms": round(one * 1000, 3),
            "one_text_spaced_ms": round(spaced * 1000, 3),
        }
        overlapped = f", {tokens / streamed:,.0f} back to back" if runner.overlap_passes else ""
        log(
            f"model alone, {length} tokens: batch {batch} {tokens / dt:,.0f} tok/s a pass at a time{overlapped}; "
            f"one text {one * 1000:.2f} ms back to back, {spaced * 1000:.2f} ms spaced"
        )
    out["peak_memory_gb"] = round(mx.get_peak_memory() / 1e9, 2)
    vectors = runner.embed(runner.tokenizer.encode_batch(checked_texts(texts)))
    out["_vectors"] = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).tolist()
    gc.collect()
    mx.clear_cache()
    return out


def bench_sentence_transformers(model_dir: Path, texts: dict[str, list[str]]) -> dict[str, Any]:
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cuda", model_kwargs={"torch_dtype": torch.bfloat16})
    out: dict[str, Any] = {"version": __import__("sentence_transformers").__version__, "lengths": {}}
    torch.cuda.reset_peak_memory_stats()
    for length, pool in texts.items():
        sample = pool[:2048]
        model.encode(sample[:256], batch_size=256)
        torch.cuda.synchronize()
        t = time.perf_counter()
        model.encode(sample, batch_size=256, normalize_embeddings=True)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t
        out["lengths"][length] = {"texts_per_s": round(len(sample) / dt, 1)}
        log(f"sentence-transformers, {length} tokens: {len(sample) / dt:,.0f} texts/s (batch 256)")
    out["peak_reserved_gb"] = round(torch.cuda.max_memory_reserved() / 1e9, 2)
    out["_vectors"] = model.encode(checked_texts(texts), normalize_embeddings=True).tolist()
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return out


def _smi(*query: str) -> list[str]:
    try:
        return subprocess.run(
            ["nvidia-smi", *query, "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5
        ).stdout.splitlines()
    except (OSError, subprocess.TimeoutExpired):
        return []


@contextmanager
def _sampling(every_s: float, sample: Callable[[], bool]) -> Iterator[None]:
    """`sample()` every `every_s` seconds on a thread while the block runs, until it returns False."""
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(every_s) and sample():
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextmanager
def gpu_memory_peak(pid: int | None = None) -> Iterator[dict[str, float]]:
    """The most device memory nvidia-smi reports in use while the block runs (GB; absent without it): the
    whole card ("gb": the CUDA contexts of this benchmark's own process count too), and that of process `pid`
    and its descendants together ("process_gb"), which is what the server takes (its engine, and with
    MODEL_PROCESS its models' processes)."""
    peak: dict[str, float] = {}

    def sample() -> bool:
        card = _smi("--query-gpu=memory.used")
        if not card:
            return False
        peak["gb"] = max(peak.get("gb", 0.0), float(card[0]) / 1024)
        tree = _process_tree(pid) if pid is not None else set()
        used_by_tree = 0.0
        for line in _smi("--query-compute-apps=pid,used_memory"):
            owner, _, used = line.partition(",")
            if owner.strip() in tree and used.strip().isdigit():
                used_by_tree += float(used) / 1024
        if used_by_tree:
            peak["process_gb"] = max(peak.get("process_gb", 0.0), used_by_tree)
        return True

    with _sampling(0.5, sample):
        yield peak


def _process_tree(pid: int) -> set[str]:
    """`pid` and its descendants, as the strings nvidia-smi prints (Linux's /proc; `pid` alone elsewhere)."""
    parents: dict[str, str] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # gone meanwhile
        parents[stat.parent.name] = fields[1]
    tree, grew = {str(pid)}, True
    while grew:
        added = {child for child, parent in parents.items() if parent in tree} - tree
        tree |= added
        grew = bool(added)
    return tree


@contextmanager
def gpu_busy() -> Iterator[list[tuple[float, float]]]:
    """nvidia-smi's `utilization.gpu` sampled while the block runs, as (perf_counter, percent) pairs: the share
    of the driver's last sample period in which a kernel ran on the card (none without nvidia-smi). Near 100
    the device bounds a level; well below it, the host or the clients do."""
    samples: list[tuple[float, float]] = []

    def sample() -> bool:
        value = _smi("--query-gpu=utilization.gpu")
        if not value or not value[0].strip().isdigit():
            return False
        samples.append((time.perf_counter(), float(value[0])))
        return True

    with _sampling(0.25, sample):
        yield samples


@dataclass
class ServerUnderTest:
    """A server started for the benchmark: where it answers, and its results so far (levels by length)."""

    name: str
    url: str
    pid: int
    results: dict[str, Any]
    trace: Path | None = None  # where it records its passes (benchmarks/pass_trace.py)


@contextmanager
def started_server(
    name: str,
    source: Path | None,
    model_dir: Path,
    env: dict[str, str],
    out_dir: Path,
    trace_passes: bool = False,
) -> Iterator[ServerUnderTest]:
    """The server from `source` (None: this tree) with its defaults and `env`, serving `model_dir`, its log in
    OUT/server-NAME.log; on the way out, its last /metrics goes to OUT/server-NAME-metrics.txt, and its GPU
    memory peak and exit status into its results. With `trace_passes`, it records its passes to
    OUT/trace-NAME.jsonl (benchmarks/pass_trace.py)."""
    import httpx

    # Its defaults include the access log, a line a request (into OUT/server-NAME.log): what a user's server
    # writes and costs.
    server_env = {"MODEL_NAME": str(model_dir), **env}
    path = [str(source) if source is not None else ""]
    trace = out_dir.resolve() / f"trace-{name}.jsonl" if trace_passes else None
    if trace is not None:  # benchmarks/pass_trace.py: the hook goes first, so every process imports it
        trace.unlink(missing_ok=True)
        server_env["PASS_TRACE"] = str(trace)
        path.insert(0, str(pass_trace.HOOK_DIR))
    if python_path := first_on_path(*path):
        server_env["PYTHONPATH"] = python_path
    # Started from the tree itself: `python -m` puts the working directory first on the path.
    server_log = out_dir.resolve() / f"server-{name}.log"
    with (
        server_process(server_env, server_log, 600, cwd=source) as (url, process),
        gpu_memory_peak(process.pid) as peak,
    ):
        # The code it ran: the commit where the tree is a checkout, and a digest of its sources that tells
        # copies of one tree from different trees anywhere.
        code = tree_code(source or Path(__file__).resolve().parents[1])
        server = ServerUnderTest(
            name, url, process.pid, {"source": str(source or "."), **code, "env": env, "lengths": {}}, trace
        )
        yield server
        (out_dir.resolve() / f"server-{name}-metrics.txt").write_text(httpx.get(f"{url}/metrics").text)
    server.results["gpu_memory_peak_gb"] = round(peak.get("gb", 0.0), 2) or None
    server.results["server_gpu_memory_peak_gb"] = round(peak.get("process_gb", 0.0), 2) or None
    # A server stopped by SIGTERM exits 0, or by that signal (uvicorn re-raises it), once it has drained;
    # anything else (an abort as native libraries unload, the shutdown watchdog's 1) is what an orchestrator
    # would see at every rollout.
    server.results["exit_status"] = process.returncode
    if process.returncode not in CLEAN_EXITS:
        log(f"server {name}: exited with status {process.returncode} after SIGTERM; see {server_log}")


# How a server that drained after SIGTERM exits (Popen's status: a negative number is the signal that ended
# it).
CLEAN_EXITS = (0, -signal.SIGTERM)

# Busiest processes and threads a level's console line names.
_BUSIEST_SHOWN = 4


@dataclass(frozen=True)
class LoadClient:
    """How the load generator runs a level: the parser it reads answers with (loadgen.PARSERS), and how many
    clients each of its processes runs (0, `auto`: 32, at most 8 processes, as every earlier figure was
    taken)."""

    parser: str = "orjson"
    per_process: int = 0

    def processes(self, clients: int) -> int:
        if not self.per_process:
            return min(8, max(1, clients // 32))
        return min(os.cpu_count() or 1, max(1, math.ceil(clients / self.per_process)))

    def suffix(self, first: LoadClient) -> str:
        """What sets this client apart from `first` in a result's name: "", "+json", "+c16", "+json+c16"."""
        parser = f"+{self.parser}" if self.parser != first.parser else ""
        spread = f"+c{self.per_process or 'auto'}" if self.per_process != first.per_process else ""
        return parser + spread


def load_clients(parsers: str, per_process: str) -> tuple[LoadClient, ...]:
    """Every parser with every clients-a-process setting (comma lists; `auto` or a number), parser first."""
    spreads = [0 if value == "auto" else int(value) for value in per_process.split(",")]
    return tuple(LoadClient(parser, spread) for parser in parsers.split(",") for spread in spreads)


def level_bodies(model_dir: Path, length: str, clients: int, seconds: float, seed: str) -> list[bytes]:
    """Request bodies of fresh random texts for a load of `clients` for `seconds` (no cache hits), one text a
    request, drawn from `seed`."""
    pool = workload_texts(
        model_dir / "tokenizer.json", length, level_texts(length, clients, seconds), zlib.crc32(seed.encode())
    )
    return [json.dumps({"input": t}).encode() for t in pool]


def run_level(
    server: ServerUnderTest,
    model_dir: Path,
    length: str,
    clients: int,
    duration: float,
    seed: str,
    client: LoadClient = LoadClient(),
) -> dict[str, Any]:
    """`clients` clients sending one text each of `length` at a time for `duration` seconds (half that for one
    client), run by the load generator as `client` says: the client's figures, the server's own stage means
    over the level, and the busiest threads."""
    import httpx

    url = server.url
    seconds = duration if clients > 1 else duration / 2
    bodies = level_bodies(model_dir, length, clients, seconds, seed)
    before = httpx.get(f"{url}/metrics").text
    # Which processes and threads were busy over the level, the load generator's start-up included (the
    # engine's event loop is "[main]", MLX's thread "[mlx0]").
    threads, machine, started = threads_now(), machine_ticks(), time.perf_counter()
    with gpu_busy() as device:
        r = run_load(
            f"{url}/v1/embeddings",
            bodies,
            clients,
            seconds,
            processes=client.processes(clients),
            parser=client.parser,
        )
    ended = time.perf_counter()
    cpu = busiest(threads, ended - started)
    # The whole machine's share of its cores, the load generator included (its processes have exited by now).
    host_cpu, stolen = machine_shares(machine)
    summary = r.summary() | level_means(httpx.get(f"{url}/metrics").text, since=before)
    # The load ran for the last `seconds` (the load generator's start-up came first); the first half second
    # of it is left out too, as the driver's sample period reaches back that far.
    under_load = [percent for at, percent in device if ended - seconds + 0.5 <= at <= ended]
    if under_load:
        summary["gpu_busy_percent"] = round(sum(under_load) / len(under_load), 1)
    summary["cpu_percent"] = cpu
    summary["host_cpu_percent"] = host_cpu
    # A virtual machine's CPUs given to its neighbours while they had work: a host that drifts shows here.
    summary["host_steal_percent"] = stolen
    summary["client_parser"] = client.parser
    summary["client_processes"] = client.processes(clients)
    if server.trace is not None:  # summarized once the server has stopped and written all of it
        summary["_window"] = (started, ended)
    # The console line names the busiest few; the results file keeps every process and thread at 1% or more.
    shown = {key: value for key, value in summary.items() if key not in ("cpu_percent", "_window")}
    shown["busiest_cpu_percent"] = dict(list(cpu.items())[:_BUSIEST_SHOWN])
    log(f"server {server.name}, {length} tokens:", shown)
    return summary


def _result_name(name: str, round_: int, client: LoadClient, clients: tuple[LoadClient, ...]) -> str:
    """How a server's results are reported: NAME for the first load client's round 1, NAME+json, NAME+c16
    for another's (`LoadClient.suffix`), and ".R" added for round R > 1 (NAME.2, NAME+json.2, ...)."""
    base = name + client.suffix(clients[0])
    return base if round_ == 1 else f"{base}.{round_}"


def warm_up(server: ServerUnderTest, model_dir: Path, length: str, clients: int, seconds: float) -> None:
    """Load a server for `seconds` before its first level, not recorded, so that its first level measures
    what the later ones do and not one-time costs: the device's buffer cache growing to the working set of
    overlapped passes, each process's first requests (on an H100, a first level of 256 clients read 7,552
    req/s where the same tree's later ones read 8,813-10,241: docs/perf/log.md)."""
    bodies = level_bodies(model_dir, length, clients, seconds, f"warm-up/{server.name}")
    r = run_load(
        f"{server.url}/v1/embeddings", bodies, clients, seconds, processes=LoadClient().processes(clients)
    )
    log(
        f"server {server.name}: warmed up with {clients} clients of {length} tokens, not recorded",
        r.summary(),
    )


def bench_servers(
    servers: list[tuple[str, Path | None, dict[str, str]]],
    model_dir: Path,
    lengths: list[str],
    concurrency: list[int],
    duration: float,
    rounds: int,
    out_dir: Path,
    traced: Collection[str] = (),
    reference: tuple[list[str], np.ndarray] | None = None,
    clients: tuple[LoadClient, ...] = (LoadClient(),),
    warmup: float = 0.0,
) -> dict[str, Any]:
    """Every server started at once, then each level run on each server in turn, the order reversed every
    round, so a host that drifts during the run (neighbouring runs here differ by up to 20%) moves every
    server's figures alike. Results by server name; round R > 1 of server NAME is "NAME.R". With
    `traced`, the servers of those names record their passes, and each of their levels has its passes'
    summary (benchmarks/pass_trace.py) under "passes". With
    `reference` (texts and the model alone's vectors for them), each server's answers for those texts are
    compared with it first (benchmarks/server_answers.py: "answers_vs_model_cosine_min", the least of
    "answers_vs_model_cosine", which has the texts sent one a request and all in one apart). With more than
    one of `clients` (how the load generator runs), each server takes each level once with each, in the
    same alternating order (`_result_name`)."""
    results: dict[str, Any] = {}
    with ExitStack() as stack:
        running = [
            stack.enter_context(started_server(name, source, model_dir, env, out_dir, name in traced))
            for name, source, env in servers
        ]
        if reference is not None:
            for server in running:
                paths = {path: round(c, 5) for path, c in cosine_min(server.url, *reference).items()}
                server.results["answers_vs_model_cosine"] = paths
                server.results["answers_vs_model_cosine_min"] = min(paths.values())
                log(f"server {server.name}: its answers against the model alone's, least cosine", paths)
        if warmup > 0:
            for server in running:
                warm_up(server, model_dir, lengths[0], max(concurrency), warmup)
        variants = [(server, client) for server in running for client in clients]
        for round_ in range(1, rounds + 1):
            order = variants if round_ % 2 else variants[::-1]
            for length in lengths:
                for level_clients in concurrency:
                    for server, client in order:
                        key = _result_name(server.name, round_, client, clients)
                        # A seed per server, load client, round, length and level: no text is sent twice.
                        seed = f"{key}/{length}/{level_clients}"
                        level = run_level(server, model_dir, length, level_clients, duration, seed, client)
                        entry = results.setdefault(key, {**server.results, "lengths": {}})
                        entry["lengths"].setdefault(length, []).append(level)
    # Memory peaks, exit statuses and traces are complete once the servers have stopped.
    for server in running:
        events = pass_trace.read(server.trace) if server.trace is not None and server.trace.exists() else []
        timeline = pass_trace.Timeline(events)
        names = (_result_name(server.name, r, c, clients) for r in range(1, rounds + 1) for c in clients)
        for key in names:
            entry = results[key]
            entry |= {k: v for k, v in server.results.items() if k.endswith("_peak_gb") or k == "exit_status"}
            for level in (level for levels in entry["lengths"].values() for level in levels):
                window = level.pop("_window", None)
                if window is not None:
                    level["passes"] = pass_trace.summarize(timeline.near(*window), *window)
    return results


def against_baselines(results: dict[str, Any], length: str, level: dict[str, Any]) -> str:
    """A level's requests/s over sentence-transformers' texts/s at the same length (its requests carry one text
    each), and its tokens/s as a share of the model alone's at a full batch; "-" where a baseline did not run."""
    st = ((results.get("sentence_transformers") or {}).get("lengths") or {}).get(length) or {}
    model = ((results.get("model") or {}).get("lengths") or {}).get(length) or {}
    times = f"{level['requests_per_s'] / st['texts_per_s']:.2f}" if st.get("texts_per_s") else "-"
    share = f"{100 * level['tokens_per_s'] / model['tokens_per_s']:.0f}" if model.get("tokens_per_s") else "-"
    return f"{times:>6} {share:>7}"


def table(results: dict[str, Any]) -> str:
    # Where a request's time went, from the server's own histograms (means, ms): all of it in the server, the
    # engine process's share (front-ends only), the link (with --trace: the front-end's round trip to the
    # engine less the engine's share), the wait for the model and the pass; texts a pass. Then the MLX
    # thread's share of the time launching (--trace), the GPU's busy share, the whole machine's CPU share, and
    # the busiest load-generator process's CPU in percent of a core (near 100: the clients bound the level).
    # Last, the level against the same run's baselines (against_baselines).
    stages = (
        ("server_mean_ms", 7),
        ("engine_mean_ms", 7),
        ("link_ms", 6),
        ("queue_wait_mean_ms", 7),
        ("forward_mean_ms", 7),
        ("texts_per_pass", 6),
    )
    lines = [host_line(results["host"])] if "host" in results else []
    lines += [
        f"{'server':>8} {'length':>6} {'clients':>7} {'req/s':>9} {'tok/s':>10} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'server':>7} {'engine':>7} {'link':>6} {'queue':>7} {'pass':>7} {'texts':>6} {'busy %':>6} {'gpu %':>6}"
        f" {'host %':>6} {'gen %':>6} {'x ST':>6} {'% model':>7}"
    ]
    for name, server in results.get("server", {}).items():
        for length, levels in server["lengths"].items():
            for level in levels:
                trip = level.get("passes", {}).get("engine_trip_ms", float("nan"))
                values = dict(level, link_ms=trip - level.get("engine_mean_ms", float("nan")))
                split = " ".join(
                    f"{values[key]:>{width}.1f}"
                    if key in values and values[key] == values[key]
                    else f"{'-':>{width}}"
                    for key, width in stages
                )
                busy = level.get("passes", {}).get("mlx_busy_percent")
                lines.append(
                    f"{name:>8} {length:>6} {level['concurrency']:>7} {level['requests_per_s']:>9,.0f} "
                    f"{level['tokens_per_s']:>10,.0f} {level['p50_ms']:>8.2f} {level['p99_ms']:>8.2f} {split}"
                    f" {busy if busy is not None else '-':>6} {level.get('gpu_busy_percent', '-'):>6}"
                    f" {level.get('host_cpu_percent', '-'):>6} {level.get('busiest_client_cpu_percent', '-'):>6}"
                    f" {against_baselines(results, length, level)}"
                )
        agreement = server.get("answers_vs_model_cosine_min")
        lines.append(
            f"{name:>8} GPU memory peak {server['gpu_memory_peak_gb']} GB (card), "
            f"{server['server_gpu_memory_peak_gb']} GB (the server's processes)"
            + (f"; answers against the model alone: cosine >= {agreement}" if agreement is not None else "")
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--shape", default="0.6b")
    parser.add_argument("--model", type=Path, help="a model directory to run instead of random weights")
    parser.add_argument("--work", type=Path, default=Path("results/models"), help="where random weights go")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load level")
    parser.add_argument("--lengths", default="16,128,512,mixed")
    parser.add_argument("--concurrency", default="1,32,256,512")
    parser.add_argument("--skip", default="", help="comma list of: model,st,server")
    parser.add_argument(
        "--warmup",
        type=float,
        default=3.0,
        help="seconds of load each server takes before its first level, not recorded (0: none)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every server's levels this many times, in alternating order",
    )
    parser.add_argument(
        "--server", action="append", default=[], help="NAME=PATH: a source tree to serve from"
    )
    parser.add_argument(
        "--env", action="append", default=[], help="NAME=VALUE: a server setting for every run"
    )
    parser.add_argument(
        "--parsers",
        default="orjson",
        help="how the load generator reads answers (orjson, json): a comma list runs each level once a parser",
    )
    parser.add_argument(
        "--clients-per-process",
        default="auto",
        help="the load generator's clients a process (auto: 32, at most 8 processes; or a number): a comma "
        "list runs each level once a setting",
    )
    parser.add_argument(
        "--trace",
        nargs="?",
        const="*",
        default="",
        help="record the servers' passes (benchmarks/pass_trace.py): the MLX thread's busy share a level; "
        "alone, every server's; with a comma list of server names, theirs only (what the recording costs: "
        "one server traced beside the same tree untraced)",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    skip = set(filter(None, args.skip.split(",")))
    lengths = args.lengths.split(",")
    concurrency = [int(c) for c in args.concurrency.split(",")]
    model_dir = args.model or args.work / f"qwen3-{args.shape}"
    # The tokenizer is written after the weights: a directory without it is an interrupted write.
    if args.model is None and not (model_dir / "tokenizer.json").exists():
        log("writing random weights", model_dir)
        write_random_qwen3(model_dir, shape=args.shape, dtype="bfloat16", layout="hf")
    servers = [item.split("=", 1) for item in args.server] or [["server", ""]]
    names = [name for name, _ in servers]
    traced = names if args.trace == "*" else list(filter(None, args.trace.split(",")))
    if unknown := sorted(set(traced) - set(names)):
        parser.error(f"--trace names no server: {', '.join(unknown)}")
    texts = {length: workload_texts(model_dir / "tokenizer.json", length, 2048, seed=1) for length in lengths}
    results: dict[str, Any] = {"shape": args.shape, "date": time.strftime("%Y-%m-%d"), "server": {}}
    results["host"] = host_facts()
    results["gpu"] = ", ".join(gpu["name"] for gpu in results["host"]["gpus"]) or "none"
    log("host:", host_line(results["host"]))
    reference = None
    if "model" not in skip:
        results["model"] = bench_model(model_dir, texts)
        reference = (checked_texts(texts), np.array(results["model"]["_vectors"]))
    if "st" not in skip:
        results["sentence_transformers"] = bench_sentence_transformers(model_dir, texts)
    if "model" not in skip and "st" not in skip:
        a = np.array(results["model"].pop("_vectors"))
        b = np.array(results["sentence_transformers"].pop("_vectors"))
        results["model_vs_st_cosine_min"] = round(float((a * b).sum(axis=1).min()), 5)
        log("cosine, model alone vs sentence-transformers (bf16):", results["model_vs_st_cosine_min"])
    if "server" not in skip:
        env = dict(item.split("=", 1) for item in args.env)
        runs = []
        for name, spec in servers:
            path, *pairs = spec.split(",")
            runs.append(
                (name, Path(path).resolve() if path else None, env | dict(p.split("=", 1) for p in pairs))
            )
        results["server"] = bench_servers(
            runs,
            model_dir,
            lengths,
            concurrency,
            args.duration,
            args.rounds,
            args.out,
            traced,
            reference,
            load_clients(args.parsers, args.clients_per_process),
            args.warmup,
        )
    for section in results.values():
        if isinstance(section, dict):
            section.pop("_vectors", None)
    (args.out / "gpu_results.json").write_text(json.dumps(results, indent=2))
    print(table(results), flush=True)


if __name__ == "__main__":
    main()
