"""Database engines and the unit of work.

One use case is one database transaction: a router, job or CLI verb opens a unit of
work with `database.transaction()`, services only add to the session it yields, and it
commits once. On SQLite every write transaction starts with `BEGIN IMMEDIATE`, so
writers queue on the database lock instead of failing to upgrade a read lock; reads use
a second engine whose transactions are deferred (WAL lets them run beside a writer).
Writers, in every process, queue for SQLite's one write lock at a file lock beside the
database (`_GatedConnection`), which hands it on as soon as it is free.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, ClassVar, TypeVar, cast

try:  # POSIX; elsewhere SQLite's writers wait in its busy handler, as without the gate
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

import psycopg
import simplejson
from sqlalchemy import (
    BigInteger,
    DateTime,
    Engine,
    Index,
    MetaData,
    Table,
    create_engine,
    event,
    select,
    text,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, InstrumentedAttribute, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from billfold.clock import as_utc

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on both PostgreSQL and SQLite."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else as_utc(value)


# Micros: SQLite's INTEGER is 64-bit already; PostgreSQL needs BIGINT.
Micros = BigInteger


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime()}


_Row = TypeVar("_Row", bound=Base)


class _GatedConnection(sqlite3.Connection):
    """A SQLite connection that queues for the database's one writer on an OS file lock
    (`flock` on `<database>-writer.lock`) before its `BEGIN IMMEDIATE`, and lets go when
    its transaction ends (commit, rollback or close).

    A queue, not a guard: SQLite's own locks still decide who writes, and a writer that
    does not take the gate (a migration, the sqlite3 shell) is still excluded by them. But
    a waiter blocked in `flock` wakes as soon as the writer before it is done, where
    SQLite's busy handler sleeps and polls (up to 100 ms a sleep), so several processes
    or threads writing take turns in about the time their transactions take. The kernel
    drops the lock of a process that dies. A thread that already holds the gate on another
    connection (a write transaction opened inside another) does not wait for it: SQLite's
    busy timeout answers that one, as it did before, rather than a wait on itself that
    would never end."""

    _holders: ClassVar[set[int]] = set()  # the threads holding a gate (one each at most)

    def __init__(self, database: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(database, *args, **kwargs)
        self._gate_fd = -1
        self._gate_owner: int | None = None
        self._gate_pid = os.getpid()  # a forked child's copy never unlocks its parent's
        name = os.fspath(database)
        if fcntl is not None and name and name != ":memory:" and not name.startswith("file:"):
            self._gate_fd = _open_gate(f"{name}-writer.lock")

    def enter_gate(self) -> None:
        """Wait for the gate (before `BEGIN IMMEDIATE`)."""
        me = threading.get_ident()
        if (
            self._gate_fd < 0
            or self._gate_owner is not None
            or me in self._holders
            or self._gate_pid != os.getpid()  # inherited over a fork: not this process's
        ):
            return
        fcntl.flock(self._gate_fd, fcntl.LOCK_EX)
        self._gate_owner = me
        self._holders.add(me)

    def leave_gate(self) -> None:
        """Let go of the gate (when the transaction ends)."""
        owner, self._gate_owner = self._gate_owner, None
        if owner is None or self._gate_pid != os.getpid():
            return
        self._holders.discard(owner)
        fcntl.flock(self._gate_fd, fcntl.LOCK_UN)

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self.leave_gate()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self.leave_gate()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.leave_gate()
            if self._gate_fd >= 0 and self._gate_pid == os.getpid():
                os.close(self._gate_fd)
                self._gate_fd = -1


def _open_gate(path: str) -> int:
    """The gate's lock file, opened (made if missing); -1 if it cannot be (no gate then).
    `flock` needs no write access: another user's process may open it read-only."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        try:
            return os.open(path, os.O_RDONLY)
        except OSError:
            return -1


def _configure_sqlite(engine: Engine, *, immediate: bool) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the driver so BEGIN is ours to emit.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        if not immediate:
            connection.exec_driver_sql("BEGIN")
            return
        driver = connection.connection.driver_connection
        assert isinstance(driver, _GatedConnection)  # the write engine's factory
        driver.enter_gate()
        try:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            driver.leave_gate()  # no transaction began: nothing will end it
            raise


# JSON columns keep decimals exact both ways (request bodies carry Decimal, never float).
_JSON: dict[str, Any] = {
    "json_serializer": partial(simplejson.dumps, use_decimal=True),
    "json_deserializer": partial(simplejson.loads, use_decimal=True),
}


class Database:
    """The engines for one database URL and the transactions over them."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 20,
        max_overflow: int = 20,
        connect_timeout: int = 2,
        statement_timeout_ms: int = 0,
        pool_timeout: float = 30.0,
    ) -> None:
        self.url = url
        parsed = make_url(url)
        # How every PostgreSQL connection of this database connects (the engine's and the
        # usage committer's): a bounded connect, a bounded statement, and TCP keepalives
        # so a half-open connection is found dead instead of waited on.
        # (tcp_user_timeout: data sent and not acknowledged for that long, a server gone
        # mid-statement, drops the connection rather than waiting for the kernel's ~15 min.)
        self.connect_kwargs: dict[str, Any] = {
            "connect_timeout": connect_timeout,
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            "tcp_user_timeout": max(connect_timeout * 1000, 5000),
        }
        if statement_timeout_ms:
            # Added to the options the URL or PGOPTIONS already give, not in their place.
            given = parsed.query.get("options") or os.environ.get("PGOPTIONS") or ""
            if isinstance(given, tuple):
                given = " ".join(given)
            timeout = f"-c statement_timeout={statement_timeout_ms}"
            self.connect_kwargs["options"] = f"{given} {timeout}".strip()
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite:
            database = parsed.database
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            self.engine = create_engine(
                url, connect_args={"timeout": 30, "factory": _GatedConnection}, **_JSON
            )
            self.read_engine = create_engine(url, connect_args={"timeout": 30}, **_JSON)
            _configure_sqlite(self.engine, immediate=True)
            _configure_sqlite(self.read_engine, immediate=False)
        else:
            self.engine = create_engine(
                url,
                pool_size=pool_size,
                max_overflow=max_overflow,
                pool_pre_ping=True,
                pool_timeout=pool_timeout,
                connect_args=self.connect_kwargs,
                **_JSON,
            )
            self.read_engine = self.engine
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._read_sessions = sessionmaker(self.read_engine, expire_on_commit=False)

    @property
    def driver_url(self) -> str:
        """The URL as the driver itself takes it (psycopg's conninfo, on PostgreSQL)."""
        return self.engine.url.set(drivername=self.engine.url.get_backend_name()).render_as_string(
            hide_password=False
        )

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A unit of work: commits when the block ends, rolls everything back on error."""
        with self._sessions.begin() as session:
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only transaction (deferred on SQLite, so it does not queue behind writers)."""
        with self._read_sessions() as session:
            yield session

    @contextmanager
    def driver_connection(self) -> Iterator[Any]:
        """A pooled connection's driver connection (psycopg's, on PostgreSQL), for a writer
        that runs its own transactions on it without SQLAlchemy; back to the pool after
        (thrown away instead if it broke)."""
        pooled = self.engine.raw_connection()
        connection = pooled.driver_connection
        try:
            yield connection
        finally:
            if connection is None or connection.closed or getattr(connection, "broken", False):
                pooled.invalidate()
            pooled.close()

    def dispose(self) -> None:
        self.engine.dispose()
        if self.read_engine is not self.engine:
            self.read_engine.dispose()


def backup_sqlite(url: str, target: Path) -> int:
    """Copy the SQLite database at `url` to `target` with SQLite's online backup API: one
    consistent snapshot, taken while the server keeps writing (WAL: writers are not
    blocked). Written beside `target` first and renamed, so `target` is never half a
    copy. The copy's size in bytes."""
    database = make_url(url).database
    if make_url(url).get_backend_name() != "sqlite" or not database or database == ":memory:":
        raise ValueError("backup_sqlite takes the URL of a SQLite file")
    partial = target.with_name(f".{target.name}.partial")
    source = sqlite3.connect(f"file:{Path(database).resolve()}?mode=ro", uri=True)
    try:
        copy = sqlite3.connect(partial)
        try:
            source.backup(copy)  # all pages in one step: one snapshot
        finally:
            copy.close()
    finally:
        source.close()
    partial.replace(target)
    return target.stat().st_size


def unavailable(exc: BaseException) -> bool:
    """Whether `exc`, or an error that led to it, says the database is out of reach for
    now (stopped, restarting, failing over, unreachable, timing out, busy), as opposed to
    a bug: the HTTP API answers those 503 service_unavailable with Retry-After."""
    for current in _causes(exc):
        if isinstance(current, sa_exc.TimeoutError):  # no pooled connection came free
            return True
        if isinstance(current, sa_exc.DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, psycopg.OperationalError) and _transient(current):
            return True
        if isinstance(current, sqlite3.OperationalError) and _SQLITE_BUSY.search(str(current)):
            return True
    return False


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then what led to it (SQLAlchemy's error, then the driver's), each once."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


# SQLSTATE classes and codes of a database out of reach or briefly unable to serve: a
# connection failure (08), the server shutting down, restarting or refusing connections,
# or a statement cancelled by its timeout (57), out of connections or memory (53), a
# deadlock or serialization failure (40: retry), a lock not granted in time (55P03), a
# login refused (28: a rotated password) or a database missing (3D000: a failover or
# restore under way). Any other error is a bug, answered 500.
_TRANSIENT_CLASSES = ("08", "57", "53", "40", "28")
_TRANSIENT_CODES = ("55P03", "3D000")


def _transient(exc: psycopg.OperationalError) -> bool:
    state = exc.sqlstate
    if state is None:  # raised by the client: a connect failed, a connection was lost
        return True
    return state[:2] in _TRANSIENT_CLASSES or state in _TRANSIENT_CODES


def conflict(exc: BaseException) -> bool:
    """Whether `exc` (or its cause) is a deadlock or serialization failure: answered 503
    like an outage (a retry succeeds), but logged with its traceback (a lock-order bug
    shows up this way)."""
    return any(
        isinstance(current, psycopg.Error) and (current.sqlstate or "").startswith("40")
        for current in _causes(exc)
    )


_SQLITE_BUSY = re.compile(r"locked|busy|unable to open|disk i/o", re.IGNORECASE)


_MEMO = "billfold.transaction_memo"


def transaction_memo(session: Session) -> dict[str, Any]:
    """A dict that lives as long as the session's current transaction: what one step of a
    transaction keeps for a later step of the same one (rows it read or locked). Empty
    again in the session's next transaction; a throwaway dict before any has begun."""
    transaction = session.get_transaction()
    if transaction is None:
        return {}
    kept = session.info.get(_MEMO)
    if kept is None or kept[0] is not transaction:
        kept = (transaction, {})
        session.info[_MEMO] = kept
    memo: dict[str, Any] = kept[1]
    return memo


def insert_or_ignore(
    session: Session,
    model: type[Base],
    values: dict[str, Any],
    conflict_columns: list[str],
    *,
    index_where: str | None = None,
) -> bool:
    """INSERT … ON CONFLICT DO NOTHING; True when this call inserted the row.

    The unique index decides between concurrent writers without aborting the
    transaction, so the loser can go on to read the winner's row. `values` and
    `conflict_columns` name the model's attributes.
    """
    statement, columns = _insert_or_ignore(
        session.get_bind().dialect.name, model, tuple(conflict_columns), index_where
    )
    row = {columns.get(key, key): value for key, value in values.items()}
    return session.execute(statement, row).first() is not None


def partial_index(name: str, *columns: str, where: str, unique: bool = False) -> Index:
    """An index over the rows the SQL predicate `where` holds for, on both databases."""
    return Index(
        name, *columns, unique=unique, sqlite_where=text(where), postgresql_where=text(where)
    )


def lock_rows(
    session: Session, entity: type[_Row], key: InstrumentedAttribute[str], keys: Iterable[str]
) -> dict[str, _Row]:
    """The `entity` rows whose `key` is in `keys`, locked in key order in one statement
    (so that two callers locking some of the same rows wait for each other, never in a
    cycle) and read afresh, by key. A key with no row is left out."""
    return {
        getattr(row, key.key): row
        for row in session.scalars(
            select(entity)
            .where(key.in_(sorted(set(keys))))
            .order_by(key)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    }


@lru_cache(maxsize=256)
def _insert_or_ignore(
    dialect: str, model: type[Base], conflict_columns: tuple[str, ...], index_where: str | None
) -> tuple[Any, dict[str, str]]:
    """The statement for `insert_or_ignore`, built once (its values are parameters), and
    the model's attributes whose column is named otherwise. A Core INSERT of the table:
    the ORM's insert of the entity costs over twice the CPU for the same SQL
    (bench/statement_cpu.py)."""
    table = cast(Table, model.__table__)
    columns = {
        attribute.key: attribute.columns[0].key
        for attribute in sa_inspect(model).column_attrs
        if attribute.key != attribute.columns[0].key
    }
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        stmt: Any = pg_insert(table)
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        stmt = sqlite_insert(table)
    conflict = [columns.get(name, name) for name in conflict_columns]
    # RETURNING, not rowcount: psycopg reports -1 for an INSERT … ON CONFLICT here.
    where = text(index_where) if index_where else None
    statement = stmt.on_conflict_do_nothing(index_elements=conflict, index_where=where)
    return statement.returning(table.c[conflict[0]]), columns


# --- PostgreSQL: a column of values as one text parameter -------------------------------
#
# The cheapest way to send many values from Python: joined by the unit separator (U+001F),
# NULL as the record separator (U+001E), split by `string_to_array` (`UNPACK`). psycopg
# dumps an array element by element in Python, and a JSON document escapes every quote of
# its strings. Values must hold no separator: `packed` checks it.

UNPACK = "string_to_array({}, E'\\x1f', E'\\x1e')"  # of a placeholder: text[]
_US, _RS = "\x1f", "\x1e"


class Unpackable(ValueError):
    """A value holds a separator (or is a lone empty string): send the column as an array."""


def packed(values: Sequence[str | None]) -> str:
    """A text column as one parameter for `UNPACK` (None as NULL)."""
    text = _US.join([_RS if value is None else value for value in values])
    if (
        (values and text.count(_US) != len(values) - 1)
        or text.count(_RS) != values.count(None)
        or (len(values) == 1 and values[0] == "")  # would split to no value at all
    ):
        raise Unpackable
    return text


# A statement's array parameters (`%(name)s::type[]`), each taken as one packed text instead.
_ARRAY_PARAMETER = re.compile(r"%\((\w+)\)s::(\w+)\[\]")


class PackedForm:
    """A statement whose named array parameters (`%(name)s::type[]`) are each sent as one
    packed text, split and cast back to the array by the server."""

    def __init__(self, sql: str) -> None:
        arrays: list[str] = []

        def split(match: re.Match[str]) -> str:
            arrays.append(match.group(1))
            return f"{UNPACK.format(f'%({match.group(1)})s')}::{match.group(2)}[]"

        self.arrays_sql = sql
        self.sql = _ARRAY_PARAMETER.sub(split, sql)
        self.arrays = tuple(dict.fromkeys(arrays))

    def parameters(self, parameters: dict[str, Any]) -> dict[str, Any]:
        """`parameters` with each array packed; Unpackable if one cannot be."""
        return {
            **parameters,
            **{name: packed_column(parameters[name]) for name in self.arrays},
        }

    def sent(self, parameters: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The statement and its parameters as they go: packed, or as arrays when a column
        cannot be packed."""
        try:
            return self.sql, self.parameters(parameters)
        except Unpackable:
            return self.arrays_sql, parameters


def packed_column(values: Sequence[Any]) -> str:
    """A column of text, whole numbers, booleans, times or None as one text for `UNPACK`
    (each as PostgreSQL reads it back through the statement's cast)."""
    kinds = set(map(type, values))
    kinds.discard(type(None))
    if kinds <= {str}:
        return packed(values)
    if kinds == {int}:
        return packed([None if value is None else str(value) for value in values])
    if kinds == {bool}:
        return packed([None if value is None else "t" if value else "f" for value in values])
    if all(issubclass(kind, datetime) for kind in kinds):
        # A batch's rows mostly share their times. (An equal instant in another zone is
        # the same timestamptz, so either's text will do.)
        texts = {value: value.isoformat() for value in set(values) if value is not None}
        return packed([None if value is None else texts[value] for value in values])
    raise Unpackable(f"no packed text for {', '.join(sorted(k.__name__ for k in kinds))}")
