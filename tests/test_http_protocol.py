"""The HTTP protocol `billfold serve` runs: a response's head and body leave in one write,
and nothing written is held past the event loop's step (streams, closes)."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route
from uvicorn.server import ServerState

from billfold.api.http_protocol import CoalescingHttpToolsProtocol


class RecordingTransport(asyncio.Transport):
    """A transport that keeps each write (one entry per write, as one send would go)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _json(request: Any) -> JSONResponse:
    return JSONResponse({"ok": True})


async def _stream(request: Any) -> StreamingResponse:
    gate = request.app.state.gate

    async def events() -> Any:
        yield b"data: first\n\n"
        await gate.wait()
        yield b"data: second\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


def _protocol(
    loop: asyncio.AbstractEventLoop, gate: asyncio.Event | None = None
) -> tuple[Any, RecordingTransport]:
    app = Starlette(routes=[Route("/json", _json), Route("/stream", _stream)])
    app.state.gate = gate
    config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False)
    protocol = CoalescingHttpToolsProtocol(config, ServerState(), {}, _loop=loop)
    transport = RecordingTransport()
    protocol.connection_made(transport)
    return protocol, transport


async def _until(condition: Any) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the protocol never got there")


def test_a_response_leaves_in_one_write() -> None:
    async def scenario() -> None:
        protocol, transport = _protocol(asyncio.get_running_loop())
        for n in range(3):  # keep-alive: each response in one write of its own
            protocol.data_received(b"GET /json HTTP/1.1\r\nHost: t\r\n\r\n")
            await _until(lambda n=n: len(transport.writes) > n)
            await asyncio.sleep(0)
            assert len(transport.writes) == n + 1
            head, _, body = transport.writes[n].partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 OK")
            assert b"content-length: 11" in head
            assert body == b'{"ok":true}'
        assert not transport.closed

    asyncio.run(scenario())


def test_a_stream_gets_its_head_and_first_event_without_waiting_for_the_rest() -> None:
    async def scenario() -> None:
        gate = asyncio.Event()
        protocol, transport = _protocol(asyncio.get_running_loop(), gate)
        protocol.data_received(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
        await _until(lambda: b"data: first" in b"".join(transport.writes))
        assert b"".join(transport.writes).startswith(b"HTTP/1.1 200 OK")
        assert b"second" not in b"".join(transport.writes)
        gate.set()
        await _until(lambda: b"0\r\n\r\n" in b"".join(transport.writes))
        assert b"data: second" in b"".join(transport.writes)

    asyncio.run(scenario())


def test_what_is_written_before_a_close_goes_first() -> None:
    async def scenario() -> None:
        protocol, transport = _protocol(asyncio.get_running_loop())
        protocol.data_received(b"GET /json HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        await _until(lambda: transport.closed)
        assert len(transport.writes) == 1
        assert transport.writes[0].endswith(b'{"ok":true}')

    asyncio.run(scenario())


def test_a_malformed_request_is_answered_then_closed() -> None:
    async def scenario() -> None:
        protocol, transport = _protocol(asyncio.get_running_loop())
        protocol.data_received(b"NOT HTTP AT ALL\r\n\r\n")
        await _until(lambda: transport.closed)
        assert b"".join(transport.writes).startswith(b"HTTP/1.1 400")

    asyncio.run(scenario())
