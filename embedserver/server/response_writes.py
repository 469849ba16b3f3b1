"""One socket write for a response's head and body, where uvicorn makes two.

uvicorn's httptools cycle writes a response's status line and headers as soon as the app starts the response,
and its body when the app sends it: two `send` system calls, and on a TCP_NODELAY socket two segments the
client reads separately. An embedding answer's body follows its head within the same loop turn, so the head is
held until the body's first write joins it (a body under 64 KiB; a larger one follows it in a write of its
own). A head with no body in that turn (a HEAD request, a streamed body whose first chunk comes later) is
written when the turn ends: no answer waits on a later event.
"""

from __future__ import annotations

import asyncio
from typing import Any

# Bodies up to this size are copied behind their head, which costs less than the second send call it saves;
# a larger one (a batch's answer may be megabytes) is written after the head instead of copied.
_JOINED_BODY_BYTES = 64 * 1024


class HeadWithBody:
    """The transport as one request's response cycle sees it: its first write (the head) is held until the
    second joins it or the loop turn ends; every later write passes straight through."""

    __slots__ = ("_head", "_loop", "_started", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._head: bytes | None = None
        self._started = False

    def write(self, data: bytes) -> None:
        head = self._head
        if head is not None:
            self._head = None
            if len(data) <= _JOINED_BODY_BYTES:
                self._transport.write(head + data)
                return
            self._transport.write(head)
            self._transport.write(data)
        elif self._started:
            self._transport.write(data)
        else:
            self._started = True
            self._head = data
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write a head still held (the loop turn ended without its body, or a later response must follow it)."""
        head = self._head
        if head is not None:
            self._head = None
            self._transport.write(head)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._head = None
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + len(self._head or b"")

    def __getattr__(self, name: str) -> Any:  # is_closing, get_extra_info, ...: the transport's own
        return getattr(self._transport, name)
