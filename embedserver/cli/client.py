"""The HTTP client of the command line: JSON in and out over the standard library (no extra dependency), and
the exit codes scripts can rely on."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any

# Exit codes of every client command.
OK = 0
SERVER_ERROR = 1  # the server answered, with an error status (its message is printed)
USAGE = 2  # bad arguments or configuration (argparse uses 2 too)
UNREACHABLE = 3  # no answer: nothing listening, a timeout, a reset


class CommandError(Exception):
    def __init__(self, code: int, message: str, body: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.body = body  # the server's decoded error answer, when it gave one


def default_url() -> str:
    """EMBEDSERVER_URL, else the address `serve` would use here (HOST and PORT, as the server reads them)."""
    if url := os.environ.get("EMBEDSERVER_URL"):
        return url
    from embedserver.settings import Settings

    settings = Settings()
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"http://{host}:{settings.port}"


def call(url: str, path: str, body: Any = None, *, timeout: float = 300.0) -> Any:
    """The decoded JSON answer of GET (no body) or POST `path`; an error status or no answer raises
    CommandError with the right exit code."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"content-type": "application/json", "accept": "application/json"}
    if key := os.environ.get("EMBEDSERVER_API_KEY"):
        headers["authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url.rstrip("/") + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = None
        error = answer.get("error") if isinstance(answer, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        message = message or raw.decode(errors="replace")[:500]
        raise CommandError(SERVER_ERROR, f"{exc.code} from {url}{path}: {message}", answer) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CommandError(UNREACHABLE, f"no answer from {url}: {reason}") from None
