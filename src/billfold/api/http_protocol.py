"""uvicorn's HTTP protocol (httptools), sending each response's head and body in one write.

uvicorn writes a response's status line and headers when the app starts the response and
its body when the app sends it: two `send` system calls, and on loopback or a busy machine
two wake-ups of the client, for an answer of a few hundred bytes. Here the connection's
transport holds the head until the body is written, and sends both in one write. A head
is held no longer than the event loop's current step, so a streamed response (server-sent
events) still gets its head out before its first event; a close sends it first.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _CoalescingTransport:
    """The transport, holding a response's head until its body is written (then both go
    in one write), or until the end of the event loop's step if no body comes in it."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._held is not None:
            data, self._held = self._held + bytes(data), None
            self._transport.write(data)
        elif bytes(data[:9]) == b"HTTP/1.1 ":  # a head (or a 100 Continue): held
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        if self._held is None:
            return
        held, self._held = self._held, None
        if not self._transport.is_closing():
            self._transport.write(held)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + len(self._held or b"")

    def __getattr__(self, name: str) -> Any:
        # Everything else (reading, flow control, extra info, abort) is the transport's.
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a transport that joins a response's writes."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        coalescing = _CoalescingTransport(transport, self.loop)
        super().connection_made(coalescing)  # type: ignore[arg-type]
