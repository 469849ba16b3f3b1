"""Frames between the front-end processes and the engine process (HTTP_WORKERS), over a Unix socket.

A frame is `<u32 length><u8 kind><u32 id><u32 meta length>`, then `meta` (JSON) and a raw payload (the
vectors, as float32 bytes: no per-float encoding on either side). `meta` is written by orjson, or, when it
holds what orjson refuses but a request may carry (lone surrogates, integers past 64 bits), by the standard
library, flagged in `kind`: the engine then sees exactly what a single process would, and answers the same
4xx. Writes are coalesced: every frame sent
during one turn of the event loop leaves in one system call.
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any, cast

import orjson

from embedserver import errors

# Front-end -> engine.
EMBED = 1  # meta: an EmbedCall's fields
CANCEL = 2  # the caller of EMBED `id` went away
GET = 3  # meta: {"path"}; an operations route, answered by the engine's own app
RECORD = 4  # meta: {"event", ...}; an HTTP metric observed by the front-end (no answer)
# Engine -> front-end.
RESULT = 10  # meta: {"model", "tokens", "cached", "shape"}; payload: float32 vectors
ERROR = 11  # meta: an APIError's fields
RESPONSE = 12  # meta: {"status", "headers"}; payload: the body

_STDLIB_JSON = 0x80  # flag in `kind`: meta was written by the json module
_HEAD = struct.Struct("<IBII")
_PREFIX = struct.Struct("<I")


def frame(kind: int, id_: int, meta: Any, payload: bytes = b"") -> bytes:
    try:
        encoded = orjson.dumps(meta)
    except orjson.JSONEncodeError:
        encoded, kind = json.dumps(meta).encode(), kind | _STDLIB_JSON
    length = _HEAD.size - _PREFIX.size + len(encoded) + len(payload)
    return _HEAD.pack(length, kind, id_, len(encoded)) + encoded + payload


class FrameProtocol(asyncio.Protocol):
    """Splits the byte stream into frames for `frame_received`; `send` queues a frame for this loop turn."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._outgoing: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not its subclasses

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        offset = 0
        while len(buffer) - offset >= _HEAD.size:
            length, kind, id_, meta_length = _HEAD.unpack_from(buffer, offset)
            end = offset + _PREFIX.size + length
            if len(buffer) < end:
                break
            start = offset + _HEAD.size
            raw_meta = buffer[start : start + meta_length]
            meta = json.loads(raw_meta) if kind & _STDLIB_JSON else orjson.loads(raw_meta)
            kind &= ~_STDLIB_JSON
            payload = bytes(buffer[start + meta_length : end])
            offset = end
            self.frame_received(kind, id_, meta, payload)
        del buffer[:offset]

    def frame_received(self, kind: int, id_: int, meta: Any, payload: bytes) -> None:
        raise NotImplementedError

    def send(self, kind: int, id_: int, meta: Any, payload: bytes = b"") -> None:
        if self.transport is None or self.transport.is_closing():
            return
        encoded = frame(kind, id_, meta, payload)
        if not self._outgoing:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outgoing.append(encoded)

    def _flush(self) -> None:
        outgoing, self._outgoing = self._outgoing, []
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(outgoing))


# An APIError raised in the engine crosses as its fields and is raised again, as the same class, in the
# front-end: the client gets the same status, body and headers as from one process.
_ERRORS: dict[str, type[errors.APIError]] = {
    cls.__name__: cls
    for cls in (
        errors.APIError,
        errors.InvalidRequest,
        errors.ModelNotFound,
        errors.Overloaded,
        errors.ModelUnavailable,
        errors.InferenceError,
    )
}


def error_meta(exc: errors.APIError) -> dict[str, Any]:
    return {
        "class": type(exc).__name__,
        "status": exc.status,
        "type": exc.type,
        "message": exc.message,
        "param": exc.param,
        "code": exc.code,
        "headers": exc.headers,
    }


def rebuild_error(meta: dict[str, Any]) -> errors.APIError:
    exc = _ERRORS.get(meta["class"], errors.APIError)(
        meta["message"], param=meta["param"], code=meta["code"], headers=meta["headers"]
    )
    exc.status, exc.type = meta["status"], meta["type"]
    return exc
