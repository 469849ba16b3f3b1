"""Run `python -m embedserver` in a child process on a free loopback port, for benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_server(env: dict[str, str], log: Path | None = None, timeout: float = 300) -> Iterator[str]:
    """Start the server with `env` added to this environment, wait until /health is 200, yield its URL;
    SIGTERM it afterwards."""
    port = free_port()
    out = log.open("wb") if log else None
    proc = subprocess.Popen(
        [sys.executable, "-m", "embedserver"],
        env={**os.environ, **env, "PORT": str(port)},
        stdout=out,
        stderr=subprocess.STDOUT if out else None,
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
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        if out:
            out.close()
