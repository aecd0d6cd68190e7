"""SQLite's writers queue on a file lock (`db._GatedConnection`): held from `BEGIN
IMMEDIATE` to the end of the transaction, whichever way it ends, dropped by the kernel
when its process dies, and never waited on by the thread that already holds it."""

from __future__ import annotations

import fcntl
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import OperationalError

from billfold.db import Database, _open_gate


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path / 'gate.db'}")
    with db.transaction() as session:
        session.execute(text("CREATE TABLE marks (n INTEGER NOT NULL)"))
    yield db
    db.dispose()


def _gate_is_free(database: Database) -> bool:
    """Whether another open of the lock file could take it now (without waiting)."""
    path = f"{database.engine.url.database}-writer.lock"
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing drops a lock this probe took
    return True


def _marks(database: Database) -> list[int]:
    with database.read() as session:
        return list(session.scalars(text("SELECT n FROM marks ORDER BY rowid")))


def _write_mark(db: Database, n: int) -> None:
    with db.transaction() as session:
        session.execute(text("INSERT INTO marks VALUES (:n)"), {"n": n})


def test_a_write_transaction_holds_the_gate_until_it_commits(database: Database) -> None:
    assert _gate_is_free(database)
    with database.transaction() as session:
        session.execute(text("INSERT INTO marks VALUES (1)"))
        assert not _gate_is_free(database)
    assert _gate_is_free(database)
    with database.read() as session:  # reads never take it
        session.execute(text("SELECT count(*) FROM marks")).one()
        assert _gate_is_free(database)
    assert _marks(database) == [1]


def test_a_failed_transaction_lets_go_of_the_gate(database: Database) -> None:
    def fail() -> None:
        with database.transaction() as session:
            session.execute(text("INSERT INTO marks VALUES (1)"))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        fail()
    assert _gate_is_free(database)
    assert _marks(database) == []


def test_a_second_writer_waits_at_the_gate_and_goes_once_the_first_commits(
    database: Database,
) -> None:
    order: list[str] = []
    first_in = threading.Event()
    second_started = threading.Event()

    def second() -> None:
        second_started.set()
        with database.transaction() as session:
            session.execute(text("INSERT INTO marks VALUES (2)"))
            order.append("second wrote")

    with database.transaction() as session:
        session.execute(text("INSERT INTO marks VALUES (1)"))
        first_in.set()
        thread = threading.Thread(target=second)
        thread.start()
        second_started.wait(5)
        time.sleep(0.2)  # long enough for the second to reach the gate
        assert order == []
        order.append("first commits")
    thread.join(10)
    assert not thread.is_alive()
    assert order == ["first commits", "second wrote"]
    assert _marks(database) == [1, 2]


def test_a_thread_holding_the_gate_does_not_wait_for_it_again(database: Database) -> None:
    """A second write connection in the same thread must not hang on the gate its
    first connection holds (SQLite's busy timeout would answer it instead)."""
    done = threading.Event()

    def nested() -> None:
        with database.transaction() as session:
            session.execute(text("INSERT INTO marks VALUES (1)"))
            with database.engine.connect() as other:
                gated = other.connection.driver_connection
                gated.enter_gate()  # type: ignore[union-attr]
                gated.rollback()  # type: ignore[union-attr]
        done.set()

    thread = threading.Thread(target=nested, daemon=True)
    thread.start()
    assert done.wait(10), "a thread waited on the gate it holds"
    assert _gate_is_free(database)
    assert _marks(database) == [1]


_HOLDER = """
import sys, time
from sqlalchemy import text
from billfold.db import Database
db = Database(sys.argv[1])
with db.transaction() as session:
    session.execute(text("INSERT INTO marks VALUES (9)"))
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_killed_writer_leaves_the_gate_and_the_database_writable(
    database: Database,
) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(database.engine.url)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        assert not _gate_is_free(database)
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    finally:
        if holder.poll() is None:
            holder.kill()
    _write_mark(database, 1)
    assert _marks(database) == [1]  # the killed writer's row never committed
    assert _gate_is_free(database)


def test_a_gate_that_cannot_be_opened_means_no_gate(tmp_path: Path) -> None:
    """(SQLite's busy handler then orders the writers, as before the gate.)"""
    assert _open_gate(str(tmp_path / "missing" / "db-writer.lock")) == -1
    fd = _open_gate(str(tmp_path / "db-writer.lock"))
    assert fd >= 0
    os.close(fd)


def test_a_begin_that_fails_lets_go_of_the_gate(database: Database) -> None:
    """A writer outside the gate (the sqlite3 shell, say) holds SQLite's lock past the
    busy timeout: the gated BEGIN fails, and the gate is not left held by it."""

    @event.listens_for(database.engine, "connect")
    def _short_timeout(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA busy_timeout=50")

    database.engine.dispose()  # new connections, with the short timeout
    outsider = sqlite3.connect(str(database.engine.url.database), isolation_level=None)
    outsider.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(OperationalError, match="locked"):
            _write_mark(database, 1)
        assert _gate_is_free(database)
    finally:
        outsider.rollback()
        outsider.close()
    _write_mark(database, 2)
    assert _marks(database) == [2]
