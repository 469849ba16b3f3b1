"""Headers every answer carries, whatever produced it (a route, the fast lane, an error, a refusal before
any route): `x-content-type-options: nosniff`, so a browser never reads a JSON or text body as something
else, `cache-control: no-store`, since answers hold user data and are never the same resource twice, and the
request's `x-request-id`. Added by the request metrics layer (request_metrics.py), which wraps every answer
anyway, so no layer of its own wraps `send` for them. uvicorn's `server` header is off
(server/http_server.py)."""

from __future__ import annotations

_ADDED = ((b"x-content-type-options", b"nosniff"), (b"cache-control", b"no-store"))
_NAMES = {name for name, _ in _ADDED}


def stamped(headers: list[tuple[bytes, bytes]], request_id: bytes) -> list[tuple[bytes, bytes]]:
    """`headers` with the request id and every added header the answer does not set itself."""
    if any(name.lower() in _NAMES for name, _ in headers):
        present = {name.lower() for name, _ in headers}
        return [*headers, *(h for h in _ADDED if h[0] not in present), (b"x-request-id", request_id)]
    return [*headers, *_ADDED, (b"x-request-id", request_id)]
