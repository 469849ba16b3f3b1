"""Logs an operator can use: one access line per request (never the input), JSON lines as an option, the
request id echoed, a line when a model starts loading, and rate-limited warnings."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from embedserver import logs
from embedserver.logs import EveryFewSeconds
from embedserver_testing.server_process import server_process

SECRET = "a text that must never reach the log"


def _wait_for(log: Path, predicate: object, timeout: float = 5.0) -> list[str]:
    """The log's lines once `predicate(lines)` holds (front-ends write from their own processes)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = log.read_text().splitlines()
        if predicate(lines) or time.monotonic() > deadline:  # type: ignore[operator]
            return lines
        time.sleep(0.1)


@pytest.mark.slow
def test_json_access_log_with_front_ends(tiny_qwen3: Path, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    env = {"MODEL_NAME": str(tiny_qwen3), "HF_HUB_OFFLINE": "1", "HTTP_WORKERS": "2", "LOG_FORMAT": "json"}
    with server_process(env, log, 120) as (url, _):
        given = httpx.post(
            f"{url}/v1/embeddings", json={"input": [SECRET, "two"]}, headers={"x-request-id": "abc-123"}
        )
        made = httpx.post(f"{url}/embed", json={"text": SECRET})
        refused = httpx.post(f"{url}/v1/embeddings", json={"input": ""})
        assert given.headers["x-request-id"] == "abc-123" and given.status_code == 200
        assert len(made.headers["x-request-id"]) == 16 and refused.status_code == 400
        # Each front-end writes its own access lines: wait for the three requests' own (not just any three,
        # which the start-up's health checks could be).
        ids = ["abc-123", made.headers["x-request-id"], refused.headers["x-request-id"]]
        lines = _wait_for(log, lambda ls: all(any(f'"{id_}"' in line for line in ls) for id_ in ids))
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(records) == len([line for line in lines if line.strip()]), "every line is JSON"
    by_id = {r.get("request_id"): r for r in records if r["logger"] == "embedserver.access"}
    first = by_id["abc-123"]
    assert (first["method"], first["path"], first["status"], first["texts"]) == (
        "POST",
        "/v1/embeddings",
        200,
        2,
    )
    assert first["tokens"] == given.json()["usage"]["prompt_tokens"] and first["duration_ms"] > 0
    assert by_id[made.headers["x-request-id"]]["tokens"] == made.json()["tokens"]
    assert by_id[refused.headers["x-request-id"]]["status"] == 400
    assert any(r["message"].startswith("loading model") for r in records)
    assert SECRET not in log.read_text()


@pytest.mark.slow
def test_access_log_can_be_turned_off(tiny_qwen3: Path, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    env = {"MODEL_NAME": str(tiny_qwen3), "HF_HUB_OFFLINE": "1", "HTTP_WORKERS": "0", "ACCESS_LOG": "false"}
    with server_process(env, log, 120) as (url, _):
        assert httpx.post(f"{url}/v1/embeddings", json={"input": "x"}).status_code == 200
        time.sleep(0.3)
    text = log.read_text()
    assert "embedserver.access" not in text and " INFO embedserver.service.registry: loading model" in text


def test_warnings_are_rate_limited_and_count_what_they_held(caplog: pytest.LogCaptureFixture) -> None:
    warnings = EveryFewSeconds(logging.getLogger("test.rate"), interval=0.2)
    with caplog.at_level(logging.WARNING, logger="test.rate"):
        for _ in range(50):
            warnings.warn("429", "refused")
        warnings.warn("499", "gone")
        time.sleep(0.25)
        warnings.warn("429", "refused")
    assert [r.getMessage() for r in caplog.records] == [
        "refused",
        "gone",
        "refused (49 more since the last such line)",
    ]


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """The process's logging as it was after the test, which calls configure_logging itself (in its own call
    phase: pytest puts handlers of its own on the root logger then, which force=True takes off)."""
    root = logging.root
    saved = (root.handlers[:], root.level, logs._installed[:])
    try:
        yield
    finally:
        root.handlers[:], logs._installed[:] = saved[0], saved[2]
        root.setLevel(saved[1])


def _configured(fmt: str) -> logging.StreamHandler[io.StringIO]:
    logs.configure_logging("INFO", fmt)
    handler = logs._installed[0][0]
    handler.setStream(io.StringIO())  # type: ignore[arg-type]
    return handler  # type: ignore[return-value]


FIELDS = {"method": "POST", "status": 200, "texts": 1, "tokens": None, "request_id": "r1"}


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_an_access_line_written_directly_is_the_line_logging_would_write(
    fmt: str, restored_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The access log's own path writes, byte for byte, what the configured handler makes of the same record:
    local time to the millisecond, level, logger and message as text; the same object, fields included, as
    JSON."""
    handler = _configured(fmt)
    ns = 1_764_950_400_123_456_789  # a fixed clock: .123 s past a second
    monkeypatch.setattr(logs, "time", SimpleNamespace(**{**vars(time), "time_ns": lambda: ns}))
    access = logging.getLogger("embedserver.access")
    assert logs._direct(access) is not None  # configured in the test's call, after pytest's own handlers
    logs.log_access(access, "POST /v1/embeddings 200 2.9ms id=r1", FIELDS)
    record = access.makeRecord(
        access.name,
        logging.INFO,
        "(unknown file)",
        0,
        "%s",
        ("POST /v1/embeddings 200 2.9ms id=r1",),
        None,
        extra=FIELDS,
    )
    record.created, record.msecs = ns / 1e9, 123.0
    monkeypatch.setattr(logs, "time", time)
    assert handler.stream.getvalue() == handler.format(record) + "\n"
    written = handler.stream.getvalue()
    assert (
        json.loads(written)["time"].endswith(".123Z")
        if fmt == "json"
        else ",123 INFO embedserver.access: POST" in written
    )


def test_an_access_line_goes_through_logging_when_anything_else_would_see_it(
    restored_logging: None,
) -> None:
    """A handler, a filter or a level added after configure_logging sees (or drops) access lines as before:
    the direct path is only taken where the configured handler alone would get the record."""
    handler = _configured("text")  # now, in the test's call: pytest adds handlers of its own to the root
    access = logging.getLogger("embedserver.access")
    assert logs._direct(access) is not None
    logs.log_access(access, "direct", FIELDS)
    assert handler.stream.getvalue().endswith(" INFO embedserver.access: direct\n")

    class Kept(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.records: list[logging.LogRecord] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.records.append(record)

    kept = Kept()
    logging.root.addHandler(kept)
    try:
        assert logs._direct(access) is None
        logs.log_access(access, "seen", FIELDS)
    finally:
        logging.root.removeHandler(kept)
    assert [(r.getMessage(), r.request_id) for r in kept.records] == [("seen", "r1")]  # type: ignore[attr-defined]
    assert handler.stream.getvalue().endswith(" INFO embedserver.access: seen\n")
    access.setLevel(logging.WARNING)
    try:
        logs.log_access(access, "dropped", FIELDS)
    finally:
        access.setLevel(logging.NOTSET)
    dropped = logging.Filter("nothing")
    handler.addFilter(dropped)
    try:
        logs.log_access(access, "filtered", FIELDS)
    finally:
        handler.removeFilter(dropped)
    assert "dropped" not in handler.stream.getvalue() and "filtered" not in handler.stream.getvalue()


def test_an_access_line_whose_write_fails_never_fails_the_request(
    restored_logging: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A log stream that refuses writes (a closed pipe) is reported as `logging` reports it, on stderr, and the
    request's code goes on."""
    handler = _configured("text")

    class Closed(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError("the log's reader went away")

    handler.setStream(Closed())  # type: ignore[arg-type]
    monkeypatch.setattr(logging, "raiseExceptions", True)
    logs.log_access(logging.getLogger("embedserver.access"), "lost", FIELDS)
    assert "BrokenPipeError" in capsys.readouterr().err
