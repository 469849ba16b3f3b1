"""A response's head and body leave the front-end in one socket write (embedserver/server/response_writes.py),
through uvicorn's real httptools cycle: a body sent at once joins its head; a head whose body comes later is
not held past its loop turn; pipelined answers keep their order; a closed connection gets its head first."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.config import Config
from uvicorn.server import ServerState

from embedserver.metrics import Metrics
from embedserver.server.http_protocol import ConnectionLimits, guarded_protocol
from embedserver.server.response_writes import HeadWithBody


class _Transport(asyncio.Transport):
    """Records each write separately (a write is a send call on the socket)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = self.aborted = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:  # type: ignore[override]
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _connection(app: Any) -> tuple[Any, _Transport]:
    limits = ConnectionLimits(5, 5, 5, 4096, 16, 1 << 20)
    protocol: Any = guarded_protocol(limits, Metrics())(  # type: ignore[call-arg]
        config=Config(app, lifespan="off"), server_state=ServerState(), app_state={}
    )
    transport = _Transport()
    protocol.connection_made(transport)
    return protocol, transport


async def _answered(transport: _Transport, answers: int) -> None:
    for _ in range(200):
        if b"".join(transport.writes).count(b"HTTP/1.1 200") >= answers:
            return
        await asyncio.sleep(0.005)


async def _whole(scope: Any, receive: Any, send: Any) -> None:
    body = scope["path"].encode()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]}
    )
    await send({"type": "http.response.body", "body": body})


async def test_a_response_sent_at_once_is_one_write() -> None:
    protocol, transport = _connection(_whole)
    protocol.data_received(b"GET /one HTTP/1.1\r\nhost: localhost\r\n\r\n")
    await _answered(transport, 1)
    await asyncio.sleep(0.01)  # nothing follows at the turn's end
    assert len(transport.writes) == 1
    head, body = transport.writes[0].split(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"content-length: 4" in head and body == b"/one"


async def test_a_head_whose_body_comes_later_is_written_when_its_turn_ends() -> None:
    body_may_go = asyncio.Event()

    async def streamed(scope: Any, receive: Any, send: Any) -> None:
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"transfer-encoding", b"chunked")]}
        )
        await body_may_go.wait()
        await send({"type": "http.response.body", "body": b"late"})

    protocol, transport = _connection(streamed)
    protocol.data_received(b"GET /s HTTP/1.1\r\nhost: localhost\r\n\r\n")
    await _answered(transport, 1)
    # The client has the head while the body is still to come.
    assert len(transport.writes) == 1 and transport.writes[0].startswith(b"HTTP/1.1 200 OK")
    body_may_go.set()
    for _ in range(100):
        if len(transport.writes) == 2:
            break
        await asyncio.sleep(0.005)
    assert transport.writes[1] == b"4\r\nlate\r\n0\r\n\r\n"


async def test_pipelined_answers_keep_their_order() -> None:
    protocol, transport = _connection(_whole)
    protocol.data_received(
        b"GET /first HTTP/1.1\r\nhost: localhost\r\n\r\nHEAD /second HTTP/1.1\r\nhost: localhost\r\n\r\n"
        b"GET /third HTTP/1.1\r\nhost: localhost\r\n\r\n"
    )
    await _answered(transport, 3)
    await asyncio.sleep(0.01)
    sent = b"".join(transport.writes)
    # The HEAD answer has its head only (no body), between the other two.
    assert sent.index(b"/first") < sent.index(b"content-length: 7") < sent.index(b"/third")
    assert b"/second" not in sent and sent.count(b"HTTP/1.1 200 OK") == 3


async def test_closing_writes_a_held_head_first_and_abort_drops_it() -> None:
    loop = asyncio.get_running_loop()
    transport = _Transport()
    writes = HeadWithBody(transport, loop)
    writes.write(b"head")
    assert transport.writes == [] and writes.get_write_buffer_size() == 4
    writes.close()
    assert transport.writes == [b"head"] and transport.closed

    transport = _Transport()
    writes = HeadWithBody(transport, loop)
    writes.write(b"head")
    writes.abort()
    await asyncio.sleep(0)  # the turn's end finds nothing held
    assert transport.writes == [] and transport.aborted
    # Everything else is the transport's own.
    assert writes.is_closing() and writes.get_extra_info("peername") == ("127.0.0.1", 5000)


async def test_a_large_body_follows_its_head_uncopied() -> None:
    """A body past 64 KiB (a large batch's answer) is written as it is, after its head, not copied behind it."""
    transport = _Transport()
    writes = HeadWithBody(transport, asyncio.get_running_loop())
    body = b"x" * (1 << 20)
    writes.write(b"head")
    writes.write(body)
    assert transport.writes == [b"head", body]
    await asyncio.sleep(0)
    assert len(transport.writes) == 2  # nothing left held for the turn's end
