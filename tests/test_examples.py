"""Every script in examples/ runs as written against the real server process (with front-ends) and prints what
it says it prints."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import tiny_pair_server

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module")
def server(catalog_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with tiny_pair_server(catalog_file, tmp_path_factory, http_workers=2) as url:
        yield url


def _run(server: str, tiktoken_cache: Path, *command: str) -> str:
    env = {**os.environ, "EMBEDSERVER_URL": server, "TIKTOKEN_CACHE_DIR": str(tiktoken_cache)}
    done = subprocess.run(command, cwd=EXAMPLES.parent, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.slow
def test_curl_example(server: str, tiktoken_cache: Path) -> None:
    out = _run(server, tiktoken_cache, "bash", "examples/curl.sh")
    assert "0 64 [" in out and "dimension 32" in out and "Cats eat meat." in out and "tokens" in out


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("openai_client.py", "dimension 64"),
        ("langchain_rag.py", "reranked:"),
        ("llamaindex_rag.py", "reranked:"),
        ("cohere_rerank.py", "Kittens drink milk."),
    ],
)
def test_python_examples(server: str, tiktoken_cache: Path, script: str, expected: str) -> None:
    out = _run(server, tiktoken_cache, sys.executable, f"examples/{script}")
    assert expected in out
    scores = [float(line.split()[0]) for line in out.splitlines() if line.strip()[:1] in "0123456789-"]
    assert len(scores) >= 3 and all(0 <= s <= 1 for s in scores[-2:])
