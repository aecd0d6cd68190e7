"""A PostgreSQL outage under load: stopped and started again while clients post usage
charges. Every answer comes within 2 s; every failure is 503 service_unavailable with
Retry-After; /readyz answers 503 while the database is down and 200 once it is back;
every charge a client was told of (201, or its key replayed after the outage) is in the
books exactly once; the ledger is consistent.

The database is a PostgreSQL cluster of the test's own (initdb into a temporary
directory, on a free port, run by the `postgres` user when the test runs as root), so
stopping it disturbs no other test running beside it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
import requests

from billfold.db import conflict, unavailable
from tests.conftest import ADMIN_KEY, LiveServer, _live_server, local_socket, require_service
from tests.helpers import Api

pytestmark = pytest.mark.slow

AMOUNT = Decimal("0.01")
MAX_SECONDS = 2.0  # the longest any answer may take, outage or not


def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


class Cluster:
    """A PostgreSQL cluster in a temporary directory, on a free local port."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="billfold-outage-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.as_root = os.geteuid() == 0
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self.as_root else []
        subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=60)

    def init(self) -> None:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-w", "-l",
            str(self.root / "log"), "start",
        )  # fmt: skip

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # not running
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def _free_port() -> int:
    sock = local_socket()
    port: int = sock.getsockname()[1]
    sock.close()
    return port


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    bin_dir = _pg_bin()
    if bin_dir is None:
        require_service("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    assert bin_dir is not None
    own = Cluster(bin_dir)
    try:
        own.init()
        own.start()
    except (subprocess.CalledProcessError, LookupError, PermissionError) as exc:
        own.remove()
        require_service(f"cannot run a PostgreSQL cluster of the test's own: {exc}")
    try:
        yield own
    finally:
        own.remove()


@pytest.fixture
def outage_server(cluster: Cluster) -> Iterator[LiveServer]:
    yield from _live_server(cluster.url, "sandbox", None)


@dataclass
class Seen:
    """What the clients saw: per key, the last status; every answer's time and kind."""

    answers: list[tuple[float, float, int, str | None, str | None]] = field(default_factory=list)
    # key → (account, status); status None: no answer
    keys: dict[str, tuple[str, int | None]] = field(default_factory=dict)
    ready: list[tuple[float, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _client(url: str, account_id: str, stop: threading.Event, seen: Seen) -> None:
    session = requests.Session()
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    body = {"account_id": account_id, "amount": str(AMOUNT), "usecase": "outage"}
    while not stop.is_set():
        key = f"outage-{uuid.uuid4()}"
        started = time.monotonic()
        try:
            response = session.post(
                f"{url}/api/admin/v1/usage-charges",
                json=body,
                headers={**headers, "Idempotency-Key": key},
                timeout=10,
            )
        except requests.RequestException:
            with seen.lock:
                seen.keys[key] = (account_id, None)
                seen.answers.append((started, time.monotonic() - started, 0, None, None))
            time.sleep(0.05)
            continue
        elapsed = time.monotonic() - started
        code = response.json().get("error", {}).get("code") if response.status_code >= 400 else None
        with seen.lock:
            seen.keys[key] = (account_id, response.status_code)
            seen.answers.append(
                (started, elapsed, response.status_code, code, response.headers.get("Retry-After"))
            )
        if response.status_code == 503:
            time.sleep(0.05)


def _readiness(url: str, stop: threading.Event, seen: Seen) -> None:
    while not stop.is_set():
        try:
            status = requests.get(f"{url}/readyz", timeout=10).status_code
        except requests.RequestException:
            status = 0
        with seen.lock:
            seen.ready.append((time.monotonic(), status))
        time.sleep(0.1)


def test_a_database_restart_under_load_is_answered_503_and_loses_nothing(
    cluster: Cluster, outage_server: LiveServer
) -> None:
    api = Api(outage_server.url, ADMIN_KEY)
    agents = [api.new_agent() for _ in range(4)]
    for agent in agents:
        assert agent.fund(100).status_code == 200
    seen = Seen()
    stop = threading.Event()
    threads = [
        threading.Thread(target=_client, args=(outage_server.url, a.account_id, stop, seen))
        for a in agents
        for _ in range(2)
    ]
    threads.append(threading.Thread(target=_readiness, args=(outage_server.url, stop, seen)))
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.5)
        down_at = time.monotonic()
        cluster.stop()
        time.sleep(3)
        up_at = time.monotonic()
        cluster.start()
        time.sleep(3)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)

    statuses = {status for _, _, status, _, _ in seen.answers}
    slowest = max(elapsed for _, elapsed, _, _, _ in seen.answers)
    assert slowest <= MAX_SECONDS, f"an answer took {slowest:.2f} s"
    assert statuses <= {201, 503}, statuses  # no 500, no dropped connection
    refused = [a for a in seen.answers if a[2] == 503]
    assert refused, "the outage was never seen"
    assert all(code == "service_unavailable" and retry for _, _, _, code, retry in refused)
    during = [s for at, s in seen.ready if down_at + 0.5 < at < up_at]
    after = [s for at, s in seen.ready if at > up_at + 1.5]
    assert during and set(during) == {503}, during
    assert after and set(after) == {200}, after
    # Service came back: charges succeed again after the restart.
    assert any(s == 201 for at, _, s, _, _ in seen.answers if at > up_at + 1)

    # Every request not answered 201 is retried with its key: charged at most once, and
    # the replay says whether it was.
    charged = sum(1 for _, status in seen.keys.values() if status == 201)
    replayed = 0
    for key, (account_id, status) in seen.keys.items():
        if status == 201:
            continue
        retry = api.admin_post(
            "/usage-charges",
            {"account_id": account_id, "amount": str(AMOUNT), "usecase": "outage"},
            key=key,
        )
        assert retry.status_code == 201, retry.text
        charged += 1
        replayed += retry.headers.get("Idempotency-Replayed") == "true"
    total = sum((100 - agent.balance() for agent in agents), Decimal(0))
    assert total == AMOUNT * charged, (total, charged, replayed)
    print(
        f"answers {len(seen.answers)}, 503s {len(refused)}, slowest {slowest:.3f} s,"
        f" retried {len(seen.keys) - sum(1 for _, s in seen.keys.values() if s == 201)},"
        f" of which already charged {replayed}"
    )
    for agent in agents:
        assert api.ledger_check(agent.account_id)["consistent"] is True


def _raised_through_sqlalchemy(error: Exception) -> Exception:
    import sqlalchemy.exc

    try:
        try:
            raise error
        except Exception as inner:
            raise sqlalchemy.exc.OperationalError("SELECT 1", {}, inner) from inner
    except Exception as outer:
        return outer


@pytest.mark.parametrize(
    ("error", "outage", "retry_conflict"),
    [
        (psycopg.OperationalError("connection failed: refused"), True, False),
        (psycopg.errors.AdminShutdown("terminating connection"), True, False),
        (psycopg.errors.CannotConnectNow("the database system is starting up"), True, False),
        (psycopg.errors.QueryCanceled("statement timeout"), True, False),
        (psycopg.errors.TooManyConnections("too many clients"), True, False),
        (psycopg.errors.DeadlockDetected("deadlock detected"), True, True),
        (psycopg.errors.ProgramLimitExceeded("row too big"), False, False),
        (psycopg.errors.UndefinedFile("no such file"), False, False),
        (ValueError("a bug"), False, False),
    ],
)
def test_only_an_unreachable_or_busy_database_counts_as_an_outage(
    error: Exception, outage: bool, retry_conflict: bool
) -> None:
    """503 for what a retry fixes; a bug stays a 500 (a deadlock is 503 but logged with
    its traceback)."""
    raised = _raised_through_sqlalchemy(error)
    assert unavailable(raised) is outage
    assert conflict(raised) is retry_conflict
