"""Three replicas behind a real HAProxy (deploy/haproxy/haproxy.cfg, Debian's package), under a steady load:
a rolling restart (SIGTERM) loses nothing, a SIGKILL loses at most the requests in flight on that replica, a
restarted replica gets traffic only once /ready says so, and the queue depth, the autoscaling signal, rises
with the load and falls when it stops."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest

from embedserver_testing.server_process import free_port, server_process

RECIPE = Path(__file__).resolve().parent.parent / "deploy" / "haproxy" / "haproxy.cfg"
CLIENTS = 6
TEXTS = 16  # per request, of about 200 tokens each: long enough that texts queue while a batch runs
_FILLER = " ".join(f"word{i}" for i in range(60))


class Load:
    """CLIENTS closed-loop clients through the balancer, each request of TEXTS texts never sent before; every
    outcome kept with its time (a status, or the transport error's name)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.outcomes: list[tuple[float, int | str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._serial = 0

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def since(self, start: float) -> list[int | str]:
        return [outcome for at, outcome in list(self.outcomes) if at >= start]

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=60) as client:
            await asyncio.gather(*(self._client(client) for _ in range(CLIENTS)))

    async def _client(self, client: httpx.AsyncClient) -> None:
        while not self._stop.is_set():
            self._serial += 1
            texts = [f"request {self._serial} text {i} about replicas {_FILLER}" for i in range(TEXTS)]
            try:
                status: int | str = (
                    await client.post(f"{self.url}/v1/embeddings", json={"input": texts})
                ).status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            self.outcomes.append((time.monotonic(), status))


def _metric_total(url: str, series: str) -> float:
    """The sum of a replica's samples whose line starts with `series` (its own /metrics)."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(series))


def _embedded(url: str) -> float:
    """Embedding requests a replica has answered."""
    return _metric_total(url, 'embedserver_requests_total{endpoint="/v1/embeddings"')


def _queue_depth(url: str) -> float:
    return _metric_total(url, "embedserver_queue_depth")


class Balancer:
    """HAProxy started on the recipe, plus a stats page of its own (a second config file) to read what it
    thinks of each replica."""

    def __init__(self, url: str, stats_url: str) -> None:
        self.url = url
        self.stats_url = stats_url

    def replica(self, name: str) -> dict[str, str]:
        """HAProxy's row for a replica: `status` (UP, DOWN, ...), `lbtot` (times it was chosen), ..."""
        lines = httpx.get(self.stats_url, timeout=5).text.splitlines()
        header = lines[0].removeprefix("# ").split(",")
        rows = (dict(zip(header, line.split(","), strict=False)) for line in lines[1:])
        return next(row for row in rows if row["pxname"] == "replicas" and row["svname"] == name)

    def wait_until(self, name: str, status: str, within: float) -> float:
        """Seconds until HAProxy holds `name` at `status`; fails past `within`."""
        start = time.monotonic()
        while self.replica(name)["status"] != status:
            assert time.monotonic() - start < within, f"{name} not {status} within {within} s"
            time.sleep(0.05)
        return time.monotonic() - start


@contextmanager
def _haproxy(listen: int, replicas: list[int], tmp_path: Path) -> Iterator[Balancer]:
    env = {**os.environ, "LISTEN": f"127.0.0.1:{listen}"}
    env |= {f"REPLICA_{i + 1}": f"127.0.0.1:{port}" for i, port in enumerate(replicas)}
    stats_port = free_port()
    stats = tmp_path / "stats.cfg"
    stats.write_text(
        f"frontend stats\n    mode http\n    bind 127.0.0.1:{stats_port}\n    stats enable\n    stats uri /stats\n"
    )
    log = tmp_path / "haproxy.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["haproxy", "-db", "-f", str(RECIPE), "-f", str(stats)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        balancer = Balancer(f"http://127.0.0.1:{listen}", f"http://127.0.0.1:{stats_port}/stats;csv")
        try:
            deadline = time.monotonic() + 30
            while True:  # HAProxy answering
                try:
                    balancer.replica("r1")
                    break
                except httpx.HTTPError:
                    assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                    time.sleep(0.2)
            for name in ("r1", "r2", "r3"):  # every replica has passed its checks: all in rotation
                balancer.wait_until(name, "UP", within=30)
            yield balancer
        finally:
            proc.terminate()
            proc.wait(timeout=10)


@pytest.mark.slow
def test_replicas_behind_haproxy_survive_restarts_and_kills(tiny_qwen3: Path, tmp_path: Path) -> None:
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed (Debian: apt-get install haproxy)")
    env = {"MODEL_NAME": str(tiny_qwen3), "HF_HUB_OFFLINE": "1", "HTTP_WORKERS": "0", "ACCESS_LOG": "false"}
    ports = [free_port() for _ in range(3)]
    with ExitStack() as stack:
        replicas = [
            stack.enter_context(server_process(env, tmp_path / f"replica-{i}.log", 120, port=port))
            for i, port in enumerate(ports)
        ]
        (_, proc1), (_, proc2), (url3, _) = replicas
        balancer = stack.enter_context(_haproxy(free_port(), ports, tmp_path))
        load = stack.enter_context(Load(balancer.url))

        # Steady load: the queue depth (the autoscaling signal) rises on the replicas.
        start, depth = time.monotonic(), 0.0
        while time.monotonic() - start < 4:
            depth = max(depth, sum(_queue_depth(u) for u, _ in replicas))
        assert depth > 0, (len(load.since(start)), set(load.since(start)))
        assert set(load.since(start)) == {200}

        # Rolling restart: SIGTERM one replica. /ready turns 503 while it still answers (DRAIN_DELAY_S, 5 s);
        # HAProxy's next check (every 1 s) takes it out, well before the port closes, and what it had accepted
        # completes.
        start = time.monotonic()
        proc1.send_signal(signal.SIGTERM)
        assert balancer.wait_until("r1", "DOWN", within=4.0) < 4.0
        chosen = balancer.replica("r1")["lbtot"]
        time.sleep(1.5)
        assert balancer.replica("r1")["lbtot"] == chosen, "HAProxy kept sending to the draining replica"
        assert proc1.wait(timeout=60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
        time.sleep(1.0)
        outcomes = load.since(start)
        assert outcomes and set(outcomes) == {200}, [o for o in outcomes if o != 200]

        # SIGKILL another: at most the requests in flight on it fail (HAProxy retries the rest elsewhere).
        start = time.monotonic()
        proc2.send_signal(signal.SIGKILL)
        proc2.wait(timeout=10)
        time.sleep(4.0)
        outcomes = load.since(start)
        failed = [o for o in outcomes if o != 200]
        assert len(failed) <= CLIENTS and outcomes.count(200) > 0, failed

        # Start it again on its port: it loads with /ready at 503, so no request reaches it before it can serve.
        start = time.monotonic()
        with server_process(env, tmp_path / "replica-1-again.log", 120, port=ports[1]) as (again, _):
            balancer.wait_until("r2", "UP", within=30)  # two good checks on /ready
            deadline = time.monotonic() + 10
            while _embedded(again) == 0:
                assert time.monotonic() < deadline, "the restarted replica got no traffic"
                time.sleep(0.1)
            outcomes = load.since(start)
            assert set(outcomes) == {200}, [o for o in outcomes if o != 200]
            load.__exit__()
            time.sleep(1.0)
            # The load stopped: the signal falls back to nothing waiting.
            assert _queue_depth(again) == 0 and _queue_depth(url3) == 0
