"""Test fixtures: every API test runs against SQLite and the real PostgreSQL, through a live
uvicorn server in a background thread, as clients would reach it.

PostgreSQL unreachable: the PostgreSQL half skips locally with the reason, and fails
in CI (CI=true), so CI proves both databases.

Isolation: the suite runs in random order (pytest-randomly) and in parallel
(`pytest -n 2`, pytest-xdist). Each xdist worker is its own process with its own
servers, on databases of its own (named after the worker) and ports the OS picks. Within
a worker, tests share a server but not time: a test that moves time makes a test clock
of its own and puts its accounts on it (tests/helpers.py `Api.new_clock`), and every
other account lives on real time, so no test can move another's.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
import uvicorn

from billfold.api.app import create_app
from billfold.application.container import build_services
from billfold.config import Settings
from billfold.migrate import upgrade
from billfold.services import Services
from tests.helpers import Api

PG_ADMIN_DSN = os.environ.get(
    "BILLFOLD_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
ADMIN_KEY = "bf_admin_test_key"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def require_service(reason: str) -> None:
    """Skip locally for a missing service; in CI a missing service is a failure."""
    if IN_CI:
        pytest.fail(f"CI must run this test, but: {reason}")
    pytest.skip(reason)


def postgres_reachable() -> str | None:
    try:
        with psycopg.connect(PG_ADMIN_DSN, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return f"PostgreSQL is not reachable at {PG_ADMIN_DSN}: {exc}"


def xdist_worker(request: pytest.FixtureRequest) -> str:
    """This process's xdist worker id (gw0, gw1, …), "main" without xdist."""
    return str(getattr(request.config, "workerinput", {}).get("workerid", "main"))


@pytest.fixture(scope="session")
def postgres_url(request: pytest.FixtureRequest) -> Iterator[str]:
    problem = postgres_reachable()
    if problem:
        require_service(problem)
    name = f"billfold_test_{xdist_worker(request)}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    yield f"{base}/{name}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp(f"sqlite-{xdist_worker(request)}") / "billfold.db"
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture(scope="session")
def backend(database_url: str) -> str:
    return "sqlite" if database_url.startswith("sqlite") else "postgresql"


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@dataclass
class LiveServer:
    url: str
    services: Services


@pytest.fixture(scope="session")
def live_server(database_url: str) -> Iterator[LiveServer]:
    sock = free_socket()
    port = sock.getsockname()[1]
    settings = Settings(
        database_url=database_url,
        admin_key=ADMIN_KEY,
        public_url=f"http://127.0.0.1:{port}",
        var_dir=Path("/nonexistent"),
        webhook_allow_private=True,  # the test receivers listen on 127.0.0.1
        # The whole suite is one client (127.0.0.1): per-address abuse limits would trip
        # on it. tests/test_hardening_auth.py lowers them to test them.
        tokenize_max_per_client=1_000_000,
        pay_max_attempts_per_client=1_000_000,
    )
    upgrade(database_url)
    services = build_services(settings, ADMIN_KEY)
    config = uvicorn.Config(
        create_app(services),
        log_level="warning",
        access_log=False,
        lifespan="off",
        proxy_headers=False,  # as `billfold serve` runs without BILLFOLD_FORWARDED_ALLOW_IPS
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    yield LiveServer(url=f"http://127.0.0.1:{port}", services=services)
    server.should_exit = True
    thread.join(timeout=10)
    services.database.dispose()


@pytest.fixture
def services(live_server: LiveServer) -> Services:
    return live_server.services


@pytest.fixture
def api(live_server: LiveServer) -> Api:
    return Api(live_server.url, ADMIN_KEY)


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@dataclass
class Receiver:
    """A local HTTP receiver: each path answers from its script, then 200."""

    url: str
    scripts: dict[str, list[tuple[int, dict[str, str]]]] = field(default_factory=dict)
    received: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def path(self, script: list[tuple[int, dict[str, str]]] | None = None) -> str:
        name = f"/{uuid.uuid4().hex[:8]}"
        self.scripts[name] = list(script or [])
        return name

    def at(self, path: str) -> list[tuple[dict[str, str], bytes]]:
        with self.lock:
            return [(h, b) for p, h, b in self.received if p == path]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    state = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            with state.lock:
                state.received.append((self.path, dict(self.headers.items()), body))
                script = state.scripts.get(self.path, [])
                status, headers = script.pop(0) if script else (200, {})
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()


CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        require_service(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield browser
        browser.close()
