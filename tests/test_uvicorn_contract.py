"""embedserver/server/http_protocol.py subclasses uvicorn's private httptools protocol. These checks fail
loudly, naming what moved, when an upgrade of uvicorn changes what the subclass relies on: the hooks it
overrides (with their signatures) and the per-connection state it reads. The behaviour itself (408s for slow
clients, cancellation when a client leaves) is tested end to end in test_guards.py and test_server_process.py.
"""

from __future__ import annotations

import asyncio
import inspect
from importlib.metadata import requires, version
from typing import Any

from packaging.requirements import Requirement
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from embedserver.metrics import Metrics
from embedserver.server.http_protocol import ConnectionLimits, guarded_protocol

# Each overridden hook and the parameters it takes (besides self).
HOOKS = {
    "connection_made": ["transport"],
    "data_received": ["data"],
    "on_message_begin": [],
    "on_url": ["url"],
    "on_header": ["name", "value"],
    "send_400_response": ["msg"],
    "on_headers_complete": [],
    "on_message_complete": [],
    "connection_lost": ["exc"],
}


def test_the_installed_uvicorn_is_within_the_declared_bound() -> None:
    declared = [Requirement(r) for r in requires("embedserver") or [] if r.startswith("uvicorn")]
    assert declared, "embedserver must declare its uvicorn requirement"
    assert declared[0].specifier.contains(version("uvicorn")), (
        f"uvicorn {version('uvicorn')} is outside {declared[0].specifier}: check http_protocol.py against it, "
        "then move the bound"
    )


def test_the_hooks_the_protocol_overrides_exist_with_the_same_parameters() -> None:
    for name, params in HOOKS.items():
        hook = getattr(HttpToolsProtocol, name, None)
        assert callable(hook), f"uvicorn's HttpToolsProtocol has no {name} any more"
        got = [p for p in inspect.signature(hook).parameters if p != "self"]
        assert got == params, f"HttpToolsProtocol.{name} now takes {got}, not {params}"


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:  # type: ignore[override]
        self.written += bytes(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0


async def test_the_connection_state_the_protocol_reads_is_there() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:  # never called: no request is sent
        raise AssertionError

    limits = ConnectionLimits(0.5, 0.5, 0.5, 4096, 16, 1 << 20)
    protocol_class = guarded_protocol(limits, Metrics())
    protocol: Any = protocol_class(  # type: ignore[call-arg]
        config=Config(app, lifespan="off"), server_state=ServerState(), app_state={}
    )
    transport = _Transport()
    protocol.connection_made(transport)
    # Read by the sweep (`loop`, `connections`), by connection_lost (`cycle`) and by the 408 (`transport`).
    assert protocol.loop is asyncio.get_running_loop()
    assert protocol in protocol.connections
    assert protocol.cycle is None and protocol.transport is transport
    protocol.check(protocol.loop.time() + 1.0)  # past the header deadline: 408, and the connection closes
    assert transport.written.startswith(b"HTTP/1.1 408 ") and transport.closed
    protocol.connection_lost(None)
    assert protocol not in protocol.connections


async def test_a_header_past_the_limit_is_431_through_uvicorns_parser_error_path() -> None:
    """The count and size checks raise from parser callbacks; uvicorn must still route that to
    send_400_response, which the protocol answers with 431."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("a refused request never reaches the app")

    limits = ConnectionLimits(5, 5, 5, 4096, 16, 1 << 20)
    protocol: Any = guarded_protocol(limits, Metrics())(  # type: ignore[call-arg]
        config=Config(app, lifespan="off"), server_state=ServerState(), app_state={}
    )
    transport = _Transport()
    protocol.connection_made(transport)
    headers = b"".join(b"x-h%d: v\r\n" % i for i in range(20))
    protocol.data_received(b"GET /health HTTP/1.1\r\nhost: localhost\r\n" + headers + b"\r\n")
    assert transport.written.startswith(b"HTTP/1.1 431 ") and transport.closed
