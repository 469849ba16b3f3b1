"""Run `python -m embedserver` in a child process on a free loopback port, for tests and benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server_process(
    env: dict[str, str],
    log: Path | None = None,
    timeout: float = 300,
    *,
    python: str = sys.executable,
    cwd: Path | None = None,
    args: Sequence[str] = (),
    port: int | None = None,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Start the server (`python -m embedserver [args]`, from `cwd`) with `env` added to this environment, wait
    until /health is 200, yield its URL and process; SIGTERM it afterwards. On `port`, else a free one."""
    port = port or free_port()
    out = log.open("wb") if log else None
    proc = subprocess.Popen(
        [python, "-m", "embedserver", *args],
        env={**os.environ, **env, "PORT": str(port)},
        stdout=out,
        stderr=subprocess.STDOUT if out else None,
        cwd=cwd,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited during start-up (status {proc.returncode}); see {log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not healthy after {timeout:.0f} s; see {log}")
            try:
                health = httpx.get(f"{url}/health", timeout=1)
                if health.status_code == 200:
                    break
                _raise_if_failed(health, log)
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        yield url, proc
    finally:
        if proc.poll() is None:  # a test may have stopped it already
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        if out:
            out.close()


def _raise_if_failed(health: httpx.Response, log: Path | None) -> None:
    """The server stays up when its default model fails to load (a request retries the load later); a
    benchmark waiting for it to become healthy would wait out its whole timeout (a device call's budget)."""
    try:
        body = health.json()
        default = body["models"][body["default_model"]]
    except (ValueError, KeyError, TypeError):
        return
    if default.get("status") == "failed":
        raise RuntimeError(f"the default model failed to load: {default.get('error')}; see {log}")


@contextmanager
def running_server(
    env: dict[str, str], log: Path | None = None, timeout: float = 300, *, cwd: Path | None = None
) -> Iterator[str]:
    with server_process(env, log, timeout, cwd=cwd) as (url, _):
        yield url


@contextmanager
def model_server(
    model: str | None, env: dict[str, str] | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`server_process` serving `model` (a directory), or a tiny random Qwen3 written to a temporary directory
    when it is None; quiet logs, offline. `env` adds or overrides settings."""
    with tempfile.TemporaryDirectory() as tmp:
        if model is None:
            from embedserver_testing.random_model import write_random_qwen3

            model = str(write_random_qwen3(Path(tmp) / "tiny", seed=0, layout="hf"))
        base = {"MODEL_NAME": model, "LOG_LEVEL": "WARNING", "HF_HUB_OFFLINE": "1"}
        with server_process(base | (env or {}), Path(tmp) / "server.log") as running:
            yield running
