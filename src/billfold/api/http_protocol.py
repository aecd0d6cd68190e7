"""uvicorn's HTTP protocol (httptools), sending each response's head and body in one write.

uvicorn writes a response's status line and headers when the app starts the response and
its body when the app sends it: two `send` system calls, and on loopback or a busy machine
two wake-ups of the client, for an answer of a few hundred bytes. Here the connection's
transport keeps what it is given until the end of the event loop's current step: what is
written in the same step (the head, then the body, as Starlette sends them) leaves in one
write. Nothing waits longer than that step, so a streamed response (server-sent events)
still gets its head out before its first event, and a write before `close()` is flushed
first.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _CoalescingTransport:
    """The transport, with the writes of one event-loop step joined into one."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(bytes(data))

    def flush(self) -> None:
        if not self._held:
            return
        held, self._held = self._held, []
        data = held[0] if len(held) == 1 else b"".join(held)
        if not self._transport.is_closing():
            self._transport.write(data)

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
        return self._transport.get_write_buffer_size() + sum(map(len, self._held))

    def __getattr__(self, name: str) -> Any:
        # Everything else (reading, flow control, extra info, abort) is the transport's.
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a transport that joins a response's writes."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        coalescing = _CoalescingTransport(transport, self.loop)
        super().connection_made(coalescing)  # type: ignore[arg-type]
