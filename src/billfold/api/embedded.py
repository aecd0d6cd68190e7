"""Billfold inside another process: the app as `billfold serve` builds it, and a uvicorn
server for it on a local port in a background thread.

Used by `billfold demo` (a server of its own), `billfold mcp` without BILLFOLD_URL (the
app in-process, reached through httpx.ASGITransport) and the test suite's live servers.
"""

from __future__ import annotations

import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import uvicorn
from starlette.types import ASGIApp

from billfold.api.app import create_app
from billfold.api.http_protocol import CoalescingHttpToolsProtocol
from billfold.application.container import build_services
from billfold.application.jobs import start_in_thread
from billfold.config import Settings, get_settings
from billfold.migrate import upgrade
from billfold.services import Services

__all__ = ["RunningApp", "local_socket", "serving", "start_app", "stdio_app"]


def local_socket(host: str = "127.0.0.1") -> socket.socket:
    """A socket bound to a free port on `host` (its URL is known before the app is built)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    return sock


@dataclass
class RunningApp:
    """The API app on its services, with the job worker beside it (when asked for)."""

    app: ASGIApp
    services: Services
    stop_worker: threading.Event | None

    def close(self) -> None:
        if self.stop_worker is not None:
            self.stop_worker.set()
        self.services.database.dispose()


def start_app(settings: Settings, admin_key: str, *, worker: bool = True) -> RunningApp:
    """The API app on `settings` (schema upgraded first) as `billfold serve` builds it;
    `worker`: a job worker thread beside it, as serve runs by default."""
    upgrade(settings.database_url)
    services = build_services(settings, admin_key)
    stop_worker = start_in_thread(services)[1] if worker else None
    return RunningApp(create_app(services), services, stop_worker)


@contextmanager
def serving(
    app: ASGIApp, sock: socket.socket, *, proxy_headers: bool = False, timeout: float = 20
) -> Iterator[str]:
    """Serve `app` on `sock` in a daemon thread until the block ends; yields its URL."""
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        proxy_headers=proxy_headers,
        http=CoalescingHttpToolsProtocol,  # as `billfold serve` runs it
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="embedded-api"
    )
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the embedded Billfold server did not start")
            time.sleep(0.02)
        host, port = sock.getsockname()[:2]
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def _admin_key(settings: Settings) -> str:
    """The configured operator key, var/admin_key if `billfold serve` generated one, else a
    throwaway (an in-process MCP server never uses it)."""
    if settings.admin_key:
        return settings.admin_key
    path = settings.var_dir / "admin_key"
    if path.exists():
        return path.read_text().strip()
    return f"bf_admin_{secrets.token_urlsafe(32)}"


def stdio_app() -> tuple[ASGIApp, str]:
    """For `billfold mcp` without BILLFOLD_URL: the app on this environment's settings (as
    `billfold serve` would run it, job worker included) and its public URL. Lives as
    long as the process."""
    settings = get_settings()
    return start_app(settings, _admin_key(settings)).app, settings.public_url
