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

Processors: every live server runs the sandbox, and a module declaring
`PROCESSORS = ("sandbox", "stripe")` also runs on a stripe server, whose Stripe is
tests/stripe_fake.py (localstripe) started for it alone (`pytest_generate_tests`,
`live_server`; `@pytest.mark.sandbox_only` keeps one test on the sandbox). Each
(database, processor) pair has a database and a server of its own.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests

from billfold import logs
from billfold.api.embedded import local_socket, serving, start_app
from billfold.config import Settings
from billfold.services import Services
from tests.helpers import TEST_CARDS, Api

PG_ADMIN_DSN = os.environ.get(
    "BILLFOLD_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
ADMIN_KEY = "bf_admin_test_key"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
REPO_ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO_ROOT / "test-artifacts"
# The Stripe keys the stripe live servers use against tests/stripe_fake.py (localstripe).
STRIPE_SECRET_KEY = "sk_test_billfold"
STRIPE_PUBLISHABLE_KEY = "pk_test_billfold"
STRIPE_WEBHOOK_SECRET = "whsec_billfold_test"
PROCESSORS = ("sandbox", "stripe")


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
def postgres_url(request: pytest.FixtureRequest, processor_name: str) -> Iterator[str]:
    problem = postgres_reachable()
    if problem:
        require_service(problem)
    worker = xdist_worker(request)
    name = f"billfold_test_{worker}_{processor_name}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    yield f"{base}/{name}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A module declaring `PROCESSORS = ("sandbox", "stripe")` runs its live-server tests
    on each processor (ids `test_x[sqlite-stripe]`, `test_x[sqlite-sandbox]`); a test
    marked `sandbox_only`, and every other module, on the sandbox alone."""
    if "processor_name" not in metafunc.fixturenames:
        return
    # Every live-server test is parametrized, "sandbox" included, so the sandbox server
    # is one fixture instance (one cache key) for all modules, never set up twice.
    wanted = tuple(getattr(metafunc.module, "PROCESSORS", ("sandbox",)))
    unknown = set(wanted) - set(PROCESSORS)
    if unknown:
        raise pytest.UsageError(f"{metafunc.module.__name__}: unknown PROCESSORS {unknown}")
    if metafunc.definition.get_closest_marker("sandbox_only") is not None:
        wanted = ("sandbox",)
    metafunc.parametrize("processor_name", wanted, indirect=True, scope="session")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test marked `postgres` runs on PostgreSQL only (what it tests exists only there):
    its SQLite instances are deselected, not skipped."""
    sqlite_only_instances = [
        item
        for item in items
        if item.get_closest_marker("postgres") is not None
        and getattr(item, "callspec", None) is not None
        and item.callspec.params.get("database_url") == "sqlite"
    ]
    if sqlite_only_instances:
        config.hook.pytest_deselected(items=sqlite_only_instances)
        dropped = set(map(id, sqlite_only_instances))
        items[:] = [item for item in items if id(item) not in dropped]


@pytest.fixture(scope="session")
def processor_name(request: pytest.FixtureRequest) -> str:
    """The processor the live server runs ("sandbox" unless parametrized, see above)."""
    return str(getattr(request, "param", "sandbox"))


def _answers_http(url: str) -> bool:
    try:
        requests.get(url, timeout=1)
    except requests.RequestException:
        return False
    return True


def start_stripe_fake() -> tuple[subprocess.Popen[bytes], str]:
    """tests/stripe_fake.py (localstripe) on a free port; its process and URL. Its output
    goes to a temporary file (a pipe nobody reads would fill and block it)."""
    if importlib.util.find_spec("localstripe") is None:
        require_service("localstripe is not installed (pip install localstripe)")
    sock = local_socket()
    port = sock.getsockname()[1]
    sock.close()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as output:  # the child keeps its own descriptor
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.stripe_fake", "--port", str(port)],
            cwd=REPO_ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while not _answers_http(url):
            if process.poll() is not None:
                output.seek(0)
                said = output.read().decode(errors="replace")[-4000:]
                raise RuntimeError(f"tests/stripe_fake.py exited ({process.returncode}):\n{said}")
            if time.monotonic() > deadline:
                stop_process(process)
                raise RuntimeError("tests/stripe_fake.py did not answer HTTP within 20 s")
            time.sleep(0.1)
    return process, url


def stop_process(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@contextmanager
def stripe_fake_for(processor_name: str) -> Iterator[str | None]:
    """A tests/stripe_fake.py of its own for a stripe live server (None on the sandbox)."""
    if processor_name != "stripe":
        yield None
        return
    process, url = start_stripe_fake()
    try:
        yield url
    finally:
        stop_process(process)


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, processor_name: str
) -> str:
    """A database of its own for each database kind and processor: a stripe server never
    works off (runs the jobs of, counts the rows of) a sandbox server's accounts."""
    if request.param == "sqlite":
        folder = f"sqlite-{xdist_worker(request)}-{processor_name}"
        path = tmp_path_factory.mktemp(folder) / "billfold.db"
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture(scope="session")
def backend(database_url: str) -> str:
    return "sqlite" if database_url.startswith("sqlite") else "postgresql"


@dataclass
class LiveServer:
    url: str
    services: Services
    processor: str = "sandbox"
    stripe_fake_url: str | None = None  # tests/stripe_fake.py of this server (stripe only)

    @property
    def tokenize_base(self) -> str:
        """Where clients tokenize cards for this server."""
        return self.stripe_fake_url or f"{self.url}/sandbox"

    @property
    def publishable_key(self) -> str:
        return self.services.processor.publishable_key


def processor_settings(processor_name: str, fake_url: str | None) -> dict[str, Any]:
    if processor_name == "sandbox":
        return {"processor": "sandbox"}
    return {
        "processor": "stripe",
        "stripe_secret_key": STRIPE_SECRET_KEY,
        "stripe_publishable_key": STRIPE_PUBLISHABLE_KEY,
        "stripe_webhook_secret": STRIPE_WEBHOOK_SECRET,
        "stripe_api_base": fake_url,
        "stripe_public_api_base": fake_url,
    }


@pytest.fixture(scope="session")
def live_server(database_url: str, processor_name: str) -> Iterator[LiveServer]:
    # One stripe fake per stripe live server: the sqlite and the postgresql server never
    # see each other's objects or events.
    with stripe_fake_for(processor_name) as fake_url:
        yield from _live_server(database_url, processor_name, fake_url)


def _live_server(
    database_url: str, processor_name: str, fake_url: str | None
) -> Iterator[LiveServer]:
    sock = local_socket()
    port = sock.getsockname()[1]
    settings = Settings(
        **processor_settings(processor_name, fake_url),
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
    running = start_app(settings, ADMIN_KEY, worker=False)  # the tests run jobs themselves
    try:
        with serving(running.app, sock) as url:
            if fake_url is not None:
                # The fake sends Stripe-signed events to the server's /webhooks/stripe.
                registered = requests.post(
                    f"{fake_url}/_config/webhooks/billfold",
                    data={"url": f"{url}/webhooks/stripe", "secret": STRIPE_WEBHOOK_SECRET},
                    headers={"Authorization": f"Bearer {STRIPE_SECRET_KEY}"},
                    timeout=10,
                )
                assert registered.status_code == 200, registered.text
            yield LiveServer(
                url=url,
                services=running.services,
                processor=processor_name,
                stripe_fake_url=fake_url,
            )
    finally:
        running.close()


@pytest.fixture
def services(live_server: LiveServer) -> Services:
    return live_server.services


@pytest.fixture
def stripe_fake_url(live_server: LiveServer) -> str | None:
    """The live server's tests/stripe_fake.py (None on the sandbox)."""
    return live_server.stripe_fake_url


def api_for(live_server: LiveServer) -> Api:
    """A test client of `live_server`, tokenizing where its processor says."""
    return Api(
        live_server.url,
        ADMIN_KEY,
        processor=live_server.processor,
        tokenize_base=live_server.tokenize_base,
        publishable_key=live_server.publishable_key,
    )


@pytest.fixture
def api(live_server: LiveServer) -> Api:
    return api_for(live_server)


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


# --- no secret in the logs of a whole run -------------------------------------------------

# What must never be in a log line: credentials by their shape (admin, operator and agent
# keys, Stripe keys, webhook secrets), Bearer values, signed links' signatures, and the
# suite's own passwords and card numbers.
_LEAKS = re.compile(
    r"\b(?:bf_admin|bf_at|bfo|whsec|sk_test|sk_live)_[A-Za-z0-9_\-]{4,}"
    r"|(?i:bearer)\s+(?!\[secret\])[^\s\"']{8,}"
    r"|signature=(?!\[secret\])[^&\s\"']+"
)
_KNOWN_SECRETS = (ADMIN_KEY, "correct horse battery staple", *TEST_CARDS)


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_the_logs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every log record of the run (this worker's: the live servers, jobs, use cases, at
    INFO and above) is written as production writes it (billfold.logs, JSON), and the
    file is scanned at the end: a secret in it fails the run."""
    path = tmp_path_factory.mktemp("logs") / "run.log"
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logs.formatter("json"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()
    text = path.read_text(encoding="utf-8")
    found = sorted({match.group(0) for match in _LEAKS.finditer(text)})
    found += [secret for secret in _KNOWN_SECRETS if secret in text]
    assert not found, f"secrets in the run's logs ({path}): {found[:20]}"
