"""The locust load test means something: it waits out 429s (Retry-After) instead of failing on them, finds its
load by a ramp, fails on wrong answers, and reports this run's server metrics. Run against the real server on a
queue small enough that it must refuse."""

from __future__ import annotations

import base64
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.answer_check import AnswerCheck
from embedserver_testing.server_process import server_process

ROOT = Path(__file__).resolve().parent.parent


def test_the_answer_check_catches_wrong_vectors(tiny_qwen3: Path) -> None:
    unit = np.ones(64, dtype=np.float32) / 8.0
    b64 = base64.b64encode(unit.astype("<f4").tobytes()).decode()
    check = AnswerCheck()
    assert check.wrong("/v1/embeddings", {"input": ["a", "b"]}, {"data": [{"embedding": b64}] * 2}) is None
    assert check.wrong("/embed", {"text": "a"}, {"embedding": list(unit)}) is None
    assert "1 vectors for 2 texts" in str(
        check.wrong("/embed_batch", {"texts": ["a", "b"]}, {"embeddings": [unit]})
    )
    assert "dimension 32" in str(
        check.wrong("/embed", {"text": "a"}, {"embedding": list(unit[:32] * 1.41421356)})
    )
    assert "not 1" in str(check.wrong("/embed", {"text": "a"}, {"embedding": list(unit * 2)}))


def _locust(url: str, **settings: str) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "locust", "-f", "benchmarks/locustfile.py", "--host", url, "--headless"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **settings},
    )
    return done.returncode, done.stdout + done.stderr


def _summary(out: str) -> tuple[int, int, str]:
    """(answered, 429s waited out, the line) from the load test's last words."""
    line = next(line for line in out.splitlines() if line.startswith("load test:") and "answered" in line)
    numbers = [int(word.strip(",")) for word in line.split() if word.strip(",").isdigit()]
    return numbers[0], numbers[1], line


@pytest.mark.slow
def test_locust_waits_out_429s_ramps_and_passes(tiny_qwen3: Path, tmp_path: Path) -> None:
    if importlib.util.find_spec("locust") is None:  # not imported here: it patches the process for gevent
        pytest.skip("locust is not installed (the dev and load extras have it)")
    env = {
        "MODEL_NAME": str(tiny_qwen3),
        "HF_HUB_OFFLINE": "1",
        "MAX_QUEUE_TEXTS": "48",
        "ACCESS_LOG": "false",
    }
    with server_process(env, tmp_path / "server.log", 120) as (url, _):
        # Six users against a queue of 48 texts: batches of 16-64 texts are refused while others wait.
        code, out = _locust(url, LOADTEST_USERS="6", LOADTEST_SECONDS="8")
        assert code == 0, out[-3000:]
        answered, waited, line = _summary(out)
        assert answered > 0 and waited > 0 and line.endswith(" 0 failures"), line
        assert "requests by status:" in out and "429: " in out  # this run's metrics, from the server
        code, out = _locust(url, LOADTEST_SECONDS="10", LOADTEST_STEP_S="2", LOADTEST_MAX_USERS="8")
        assert code == 0 and "load test: holding" in out, out[-3000:]
