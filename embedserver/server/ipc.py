"""Frames between the front-end processes and the engine process (HTTP_WORKERS), over a Unix socket.

Front-ends send prepared requests (token ids and cache keys, never texts) and get raw pooled vectors back as
binary buffers, many to a frame each way: the requests of one turn of a front-end's loop in one EMBEDS frame,
the answers of one turn of the engine's loop (usually one batch's) in one RESULTS frame.

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
import socket
import struct
from collections.abc import Iterator
from typing import Any, cast

import numpy as np
import orjson

from embedserver import errors
from embedserver.service.cache import KEY_BYTES
from embedserver.service.requests import PreparedRequest
from embedserver.tokenization.token_ids import TokenIds

# Front-end -> engine.
EMBED = 1  # a PreparedRequest: meta {"model", "lengths", "keyed"}; payload: keys, then int32 ids
CANCEL = 2  # the caller of EMBED `id` went away
ROUTE = 3  # meta: {"path", "method", "public"}, payload: the body; a route the engine's own app answers
RECORD = 4  # meta: [{"event", ...}, ...]; HTTP metrics observed by the front-end (no answer)
DESCRIBE = 5  # meta: {"model"}; the ModelInfo of the model a request naming it gets
# The EMBEDs a front-end sent in one turn of its loop: meta [[id, EMBED meta, payload length], ...], payload:
# theirs in that order. Frame id 0. Read back by `unpack_embeds`.
EMBEDS = 6
# Engine -> front-end.
RESULT = 10  # meta: {"cached", "shape"}; payload: float32 raw pooled vectors, one per sequence
# The RESULTs of every request answered in one turn of the engine's loop (a batch's): meta [[id, rows, columns,
# cached], ...], payload: their vectors in that order. Frame id 0. Split back into RESULTs by `split_results`.
RESULTS = 14
ERROR = 11  # meta: an APIError's fields
RESPONSE = 12  # meta: {"status", "headers"}; payload: the body
INFO = 13  # meta: a ModelInfo's fields

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


def split_frames(buffer: bytearray) -> Iterator[tuple[int, int, Any, bytes]]:
    """The whole frames at the start of `buffer` as (kind, id, meta, payload), each removed from it as it is
    taken; a partial frame stays for the bytes still to come."""
    offset = 0
    try:
        while len(buffer) - offset >= _HEAD.size:
            length, kind, id_, meta_length = _HEAD.unpack_from(buffer, offset)
            end = offset + _PREFIX.size + length
            if len(buffer) < end:
                break
            start = offset + _HEAD.size
            raw_meta = buffer[start : start + meta_length]
            meta = json.loads(raw_meta) if kind & _STDLIB_JSON else orjson.loads(raw_meta)
            payload = bytes(buffer[start + meta_length : end])
            offset = end
            yield kind & ~_STDLIB_JSON, id_, meta, payload
    finally:
        del buffer[:offset]


def recv_frames(sock: socket.socket) -> Iterator[tuple[int, int, Any, bytes]]:
    """Frames read from a blocking socket until its other end closes it."""
    buffer = bytearray()
    while chunk := sock.recv(1 << 20):
        buffer += chunk
        yield from split_frames(buffer)


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
        for received in split_frames(buffer):
            self.frame_received(*received)

    def frame_received(self, kind: int, id_: int, meta: Any, payload: bytes) -> None:
        raise NotImplementedError

    def send(self, kind: int, id_: int, meta: Any, payload: bytes = b"") -> None:
        if self.transport is None or self.transport.is_closing():
            return
        encoded = frame(kind, id_, meta, payload)
        if not self._outgoing:
            asyncio.get_running_loop().call_soon(self.flush)
        self._outgoing.append(encoded)

    def flush(self) -> None:
        """Write the frames queued this loop turn now (also called at the turn's end)."""
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


def pack_embeds(calls: list[tuple[int, Any, bytes]]) -> tuple[list[Any], bytes]:
    """(id, EMBED meta, EMBED payload) per request -> one EMBEDS frame's meta and payload."""
    meta = [[id_, request, len(payload)] for id_, request, payload in calls]
    return meta, b"".join(payload for _, _, payload in calls)


def unpack_embeds(meta: list[Any], payload: bytes) -> Iterator[tuple[int, PreparedRequest]]:
    """An EMBEDS frame -> each request's id and PreparedRequest, its ids views of `payload` (no copies)."""
    offset = 0
    for id_, request, length in meta:
        yield id_, unpack_request(request, payload, offset, offset + length)
        offset += length


def pack_results(answers: list[tuple[int, np.ndarray, list[bool]]]) -> tuple[list[Any], bytes]:
    """(id, raw float32 vectors, cached) per answer -> one RESULTS frame's meta and payload."""
    meta = [[id_, *vectors.shape, cached] for id_, vectors, cached in answers]
    return meta, b"".join(vectors.data for _, vectors, _ in answers)


def split_results(meta: list[Any], payload: bytes) -> list[tuple[int, dict[str, Any], memoryview]]:
    """A RESULTS frame -> each answer's id, RESULT meta and vectors (views of `payload`, not copies)."""
    answers, offset, view = [], 0, memoryview(payload)
    for id_, rows, columns, cached in meta:
        end = offset + rows * columns * 4
        answers.append((id_, {"cached": cached, "shape": [rows, columns]}, view[offset:end]))
        offset = end
    return answers


def pack_request(request: PreparedRequest) -> tuple[dict[str, Any], bytes]:
    """Token ids travel as one int32 buffer and cache keys as raw bytes before it: no per-id JSON."""
    lengths = [len(seq) for seq in request.sequences]
    ids = np.fromiter((i for seq in request.sequences for i in seq), dtype=np.int32, count=sum(lengths))
    keys = b"".join(request.keys) if request.keys is not None else b""
    meta = {
        "model": request.model,
        "lengths": lengths,
        "keyed": request.keys is not None,
    }
    return meta, keys + ids.tobytes()


def unpack_request(
    meta: dict[str, Any], payload: bytes, start: int = 0, end: int | None = None
) -> PreparedRequest:
    """The request packed in `payload[start:end]` (all of it by default)."""
    lengths: list[int] = meta["lengths"]
    keys: list[bytes] | None = None
    if meta["keyed"]:
        keys_end = start + len(lengths) * KEY_BYTES
        keys = [payload[k : k + KEY_BYTES] for k in range(start, keys_end, KEY_BYTES)]
        start = keys_end
    # Views of the frame, not Python ints (embedserver/tokenization/token_ids.py).
    count = ((len(payload) if end is None else end) - start) // 4
    flat = np.frombuffer(payload, dtype=np.int32, count=count, offset=start)
    sequences: list[TokenIds] = []
    offset = 0
    for length in lengths:
        sequences.append(flat[offset : offset + length])
        offset += length
    return PreparedRequest(meta["model"], sequences, keys)
