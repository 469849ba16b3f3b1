"""The `embedserver` command: help and version, flags for every setting with flags > environment > .env, the
client commands against the real server (and `embed` in-process), and the exit codes scripts rely on."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from embedserver.cli import parser
from embedserver.cli.serve_command import settings_from
from embedserver.settings import Settings
from embedserver_testing.server_process import free_port, server_process


def _cli(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "embedserver", *args],
        capture_output=True,
        text=True,
        input=stdin,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
        timeout=180,
    )


def test_help_version_and_a_flag_for_every_setting() -> None:
    top = _cli("--help")
    assert top.returncode == 0 and all(
        c in top.stdout for c in ("serve", "embed", "rerank", "models", "health")
    )
    version = _cli("--version")
    assert version.returncode == 0 and version.stdout.strip().startswith("embedserver 0.")
    serve = parser().parse_args(["serve"])
    assert set(Settings.model_fields) <= set(vars(serve))
    for command in ("serve", "embed", "rerank", "models", "health"):
        assert _cli(command, "--help").returncode == 0


def test_flags_beat_the_environment_which_beats_dotenv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("PORT=9003\nMAX_BATCH_SIZE=7\n")
    monkeypatch.delenv("MAX_BATCH_SIZE", raising=False)
    monkeypatch.setenv("PORT", "9002")  # restored afterwards, although settings_from writes it
    assert settings_from(parser().parse_args(["serve"])).port == 9002
    flagged = settings_from(parser().parse_args(["serve", "--port", "9001"]))
    assert flagged.port == 9001 and flagged.max_batch_size == 7
    monkeypatch.delenv("PORT")
    assert settings_from(parser().parse_args(["serve"])).port == 9003


def test_a_bad_flag_value_exits_2_naming_the_setting() -> None:
    bad = _cli("serve", "--max-batch-size", "many")
    assert bad.returncode == 2 and "max_batch_size" in bad.stderr
    unknown = _cli("serve", "--no-such-flag", "1")
    assert unknown.returncode == 2


def test_client_commands_exit_3_when_no_server_answers() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for args in (["health"], ["models"], ["embed", "x"], ["rerank", "q", "d"]):
        done = _cli(*args, "--url", url)
        assert done.returncode == 3 and "no answer" in done.stderr, (args, done.stderr)
    assert _cli("embed", "--url", url).returncode == 2  # no texts


@pytest.fixture(scope="module")
def server(catalog_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Started through flags, with front-ends: they must see the flags too (they read the environment)."""
    env = {"CATALOG_FILE": str(catalog_file), "HF_HUB_OFFLINE": "1", "HTTP_WORKERS": "2"}
    flags = ["serve", "--model-name", "tiny", "--rerank-model", "tiny-rerank", "--max-request-inputs", "3"]
    log = tmp_path_factory.mktemp("server") / "server.log"
    with server_process(env, log, 120, args=flags) as (url, _):
        yield url


@pytest.mark.slow
def test_serve_flags_reach_every_process(server: str) -> None:
    assert httpx.get(f"{server}/health").json()["default_model"] == "tiny"
    # Validated in a front-end process: it read the flag from the environment it inherited.
    refused = httpx.post(f"{server}/v1/embeddings", json={"input": ["a", "b", "c", "d"]})
    assert refused.status_code == 400 and "limit of 3" in refused.json()["error"]["message"]


@pytest.mark.slow
def test_embed_models_health_and_rerank_against_the_server(server: str, tmp_path: Path) -> None:
    texts = ["first text", "second text", "third text"]
    want = np.array(
        [d["embedding"] for d in httpx.post(f"{server}/v1/embeddings", json={"input": texts}).json()["data"]]
    )
    lines = _cli("embed", *texts[:2], "--url", server)
    assert lines.returncode == 0, lines.stderr
    got = [json.loads(line) for line in lines.stdout.splitlines()]
    assert [g["index"] for g in got] == [0, 1]
    assert np.allclose([g["embedding"] for g in got], want[:2], atol=1e-6)
    # A file longer than a request may hold (MAX_REQUEST_INPUTS is 3 here) goes in several requests of --batch.
    (tmp_path / "texts.txt").write_text("\n".join(texts * 2) + "\n")
    matrix = tmp_path / "out.npy"
    done = _cli(
        "embed",
        "--file",
        str(tmp_path / "texts.txt"),
        "--output",
        str(matrix),
        "--url",
        server,
        "--batch",
        "2",
    )
    assert done.returncode == 0, done.stderr
    assert np.allclose(np.load(matrix), np.vstack([want, want]), atol=1e-6)
    assert _cli("embed", "--file", "-", "--url", server, stdin="first text\n").returncode == 0

    refused = _cli("embed", "x", "--model", "no-such-model", "--url", server)
    assert refused.returncode == 1 and "404" in refused.stderr and "no-such-model" in refused.stderr

    models = _cli("models", "--url", server)
    assert models.returncode == 0 and "tiny" in models.stdout.split()
    health = _cli("health", "--url", server)
    assert health.returncode == 0 and json.loads(health.stdout)["status"] == "ok"

    ranked = _cli("rerank", "what is a cat", "a cat is a small animal", "stock prices fell", "--url", server)
    assert ranked.returncode == 0, ranked.stderr
    results = [json.loads(line) for line in ranked.stdout.splitlines()]
    scores = httpx.post(
        f"{server}/v1/rerank",
        json={"query": "what is a cat", "documents": ["a cat is a small animal", "stock prices fell"]},
    ).json()["results"]
    assert [r["index"] for r in results] == [s["index"] for s in scores]
    assert results[0]["relevance_score"] == pytest.approx(scores[0]["relevance_score"], abs=1e-6)


@pytest.mark.slow
def test_embed_in_process_equals_the_server(server: str, catalog_file: Path) -> None:
    texts = ["first text", "second text"]
    want = np.array(
        [d["embedding"] for d in httpx.post(f"{server}/v1/embeddings", json={"input": texts}).json()["data"]]
    )
    env = {"CATALOG_FILE": str(catalog_file), "MODEL_NAME": "tiny", "LOG_LEVEL": "WARNING"}
    done = _cli("embed", *texts, "--in-process", env=env)
    assert done.returncode == 0, done.stderr
    got = np.array([json.loads(line)["embedding"] for line in done.stdout.splitlines()])
    assert np.allclose(got, want, atol=1e-5)
