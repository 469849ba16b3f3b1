"""Generated input against the real server process: never a 5xx.

- schemathesis reads /openapi.json and sends what the schema allows and what it does not (its coverage and
  fuzzing phases), to every operation.
- hypothesis sends arbitrary JSON as `input` (and odd options) to /v1/embeddings: every answer is 200 with one
  unit vector per input, or a 4xx in OpenAI's error shape.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from embedserver_testing.server_process import running_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=[0, 2], ids=["one-process", "front-ends"])
def server(
    request: pytest.FixtureRequest, catalog_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """With front-ends every call also crosses the link to the engine (embedserver/server/ipc.py)."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    env = {
        "CATALOG_FILE": str(catalog_file),
        "MODEL_NAME": "tiny",
        "HF_HUB_OFFLINE": "1",
        "HTTP_WORKERS": str(request.param),
    }
    with running_server(env, log, timeout=120) as url:
        yield url


@pytest.fixture(scope="module")
def http(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=60) as client:
        yield client


def test_schemathesis_finds_no_server_error(server: str, tmp_path: Path) -> None:
    st_cli = shutil.which("st", path=str(Path(sys.executable).parent)) or shutil.which("st")
    assert st_cli, "schemathesis is a dev dependency: make install-dev"
    run = subprocess.run(
        [
            st_cli,
            "run",
            f"{server}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "40",
            "--seed",
            "20261125",
            # One worker: with two, hypothesis describes strategies from two threads at once and CPython
            # 3.11's ast.parse is not thread-safe ("AST constructor recursion depth mismatch", seen here).
            "--workers",
            "1",
            "--report-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    schema = httpx.get(f"{server}/openapi.json").json()
    operations = sum(len(methods) for methods in schema["paths"].values())
    assert re.search(rf"\b{operations} passed\b", run.stdout), run.stdout[-3000:]  # every operation exercised


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=False),
    st.text(max_size=40),  # includes lone surrogates, NUL, combining marks, RTL...
)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=12,
)
_inputs = st.one_of(
    st.text(max_size=200),
    st.lists(st.text(max_size=60), max_size=8),
    st.lists(st.integers(min_value=-5, max_value=200_000), max_size=12),
    st.lists(st.lists(st.integers(min_value=-5, max_value=200_000), max_size=6), max_size=4),
    _json,
)
_options = st.fixed_dictionaries(
    {},
    optional={
        "encoding_format": st.sampled_from(["float", "base64", "binary", "", None]),
        "dimensions": st.one_of(st.integers(min_value=-3, max_value=100), st.none(), st.text(max_size=3)),
        "model": st.sampled_from(["tiny", "tiny-alias", "nope", "../etc/passwd", "", None]),
        "input_type": st.sampled_from(["query", "document", "other", None]),
        "instruction": st.one_of(st.none(), st.text(max_size=30)),
        "truncate": st.one_of(st.booleans(), st.none(), st.integers(0, 1)),
        "normalize": st.one_of(st.booleans(), st.none()),
    },
)


def _check(response: httpx.Response, body: dict[str, Any]) -> None:
    assert response.status_code < 500, response.text
    event(f"status {response.status_code}")  # shown by --hypothesis-show-statistics
    if response.status_code != 200:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"], error
        return
    data = response.json()["data"]
    raw = body["input"]
    count = 1 if isinstance(raw, str) or (raw and isinstance(raw[0], int)) else len(raw)
    assert [item["index"] for item in data] == list(range(count))
    if body.get("encoding_format", "float") in ("float", None) and body.get("normalize", True) is not False:
        vectors = np.array([item["embedding"] for item in data], dtype=np.float32)
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=_inputs, options=_options)
def test_any_openai_body_is_answered_without_a_server_error(
    http: httpx.Client, raw: Any, options: dict[str, Any]
) -> None:
    body = {"input": raw, **options}
    # json.dumps, not httpx's encoder: lone surrogates must reach the server as \\ud800 escapes.
    response = http.post(
        "/v1/embeddings", content=json.dumps(body), headers={"content-type": "application/json"}
    )
    _check(response, body)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    payload=st.binary(max_size=300) | st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass"))
)
def test_arbitrary_bytes_as_a_body_are_a_4xx(http: httpx.Client, payload: bytes) -> None:
    for path in ("/v1/embeddings", "/embed", "/embed_batch"):
        response = http.post(path, content=payload, headers={"content-type": "application/json"})
        assert 400 <= response.status_code < 500, response.text
        assert response.json()["error"]["message"]
