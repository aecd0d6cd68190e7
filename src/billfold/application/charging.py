"""Group commit for usage charges: concurrent charges share one transaction and one fsync.

A request hands its charge to its process's committer and waits. The committer takes
every charge waiting (up to `MAX_BATCH`), writes them with `wallet.usage.write` in one
transaction and answers each request only after that transaction committed. While it
commits, the next requests queue up: the busier the server, the bigger the batches, and
an idle server answers a lone charge with no added wait (PostgreSQL's commit_delay idea,
TigerBeetle's batching, without a timer). A charge its wallet cannot cover is refused on
its own; its batch neighbours are charged.

A charge whose idempotency key is already stored (a replay, a twin) is answered `None`:
its caller takes the careful path (claim, then replay or refuse). One committer
per process and database (`usage_committers` threads on PostgreSQL, each writing its own
batch); threads and processes coordinate only through the database: every batch locks its
wallets in account order, then stores its keys in key order, so two batches never wait on
each other in a cycle.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import queue
import threading
from collections.abc import Awaitable, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar, cast

import anyio.to_thread
import psycopg

from billfold import tracing
from billfold.clock import current_test_clock
from billfold.services import Services
from billfold.wallet import usage

T = TypeVar("T")

MAX_BATCH = 512
LOOP_IDLE_CLOSE_SECONDS = 10.0  # an idle loop committer closes its connection
COMMITTER_NAME = "billfold-usage-committer"  # its connections' application_name

_Pending = tuple[usage.Charge, "Future[usage.Answer | None]"]


class ChargeCommitter:
    """The process's committer of usage charges for one `Services`."""

    def __init__(
        self, services: Services, *, max_batch: int = MAX_BATCH, threads: int | None = None
    ) -> None:
        self.services = services
        self.max_batch = max_batch
        self.pid = os.getpid()
        self._queue: queue.SimpleQueue[_Pending] = queue.SimpleQueue()
        self.batches = 0
        self.charges = 0
        self._counted = threading.Lock()  # the two counters above (statistics only)
        # Several batches in flight (one filling while another waits for its fsync) on
        # PostgreSQL; SQLite has one writer at a time, so one thread.
        if threads is None:
            threads = 1 if services.database.is_sqlite else services.settings.usage_committers
        self._threads = [
            threading.Thread(target=self._run, name=f"usage-committer-{n}", daemon=True)
            for n in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, charge: usage.Charge) -> usage.Answer | None:
        """Charge it in the next batch; the answer once that batch committed."""
        return self.enqueue(charge).result()

    def enqueue(self, charge: usage.Charge) -> Future[usage.Answer | None]:
        """Charge it in the next batch; a future of the answer (set once that batch
        committed), for a caller that awaits rather than blocks a thread."""
        future: Future[usage.Answer | None] = Future()
        self._queue.put((charge, future))
        return future

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._commit(batch)

    def _commit(self, batch: list[_Pending]) -> None:
        try:
            answers = write_batch(self.services, [charge for charge, _ in batch])
        except BaseException as exc:  # every waiting request gets the failure
            for _, future in batch:
                future.set_exception(exc)
            return
        with self._counted:
            self.batches += 1
            self.charges += len(batch)
        for (_, future), answer in zip(batch, answers, strict=True):
            future.set_result(answer)


class LoopCommitter:
    """Group commit on an event loop, for PostgreSQL: the committer is a task of the loop
    the requests run on, writing over its own psycopg AsyncConnection. A charge costs no
    thread hand-over (queue, wake-up, GIL) on its way in or out: while a batch waits for
    the database, the loop reads the next requests, which make the next batch."""

    def __init__(self, services: Services, loop: asyncio.AbstractEventLoop) -> None:
        self.services = services
        self.loop = loop
        self.max_batch = MAX_BATCH
        self.batches = 0
        self.charges = 0
        self._pending: list[tuple[usage.Op, asyncio.Future[usage.Answer | None]]] = []
        self._wake = asyncio.Event()
        self._connection: psycopg.AsyncConnection[Any] | None = None
        # A context of its own: not the one of the request that happened to start it (its
        # trace, its clock), which every later batch would otherwise run in.
        self._task = loop.create_task(
            self._run(), name="usage-committer", context=contextvars.Context()
        )

    async def submit(self, op: usage.Op) -> usage.Answer | None:
        """Write it (a charge, a hold, a capture) in the next batch; the answer once that
        batch committed (None: its key was already stored, or it is a hold operation the
        batch leaves alone: the caller takes the careful path)."""
        if not self.running:
            raise RuntimeError("the usage committer stopped")
        future: asyncio.Future[usage.Answer | None] = self.loop.create_future()
        self._pending.append((op, future))
        self._wake.set()
        return await future

    async def _run(self) -> None:
        batch: list[tuple[usage.Op, asyncio.Future[usage.Answer | None]]] = []
        try:
            while True:
                if not self._pending:
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), LOOP_IDLE_CLOSE_SECONDS)
                    except TimeoutError:
                        await self._close()  # idle: no connection held
                        await self._wake.wait()
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                try:
                    answers = await self._write([charge for charge, _ in batch])
                except Exception as exc:  # every waiting request gets the failure
                    await self._close()
                    _fail(batch, exc)
                    continue
                self.batches += 1
                self.charges += len(batch)
                for (_, future), answer in zip(batch, answers, strict=True):
                    if not future.done():  # not if its request was cancelled meanwhile
                        future.set_result(answer)
                batch = []
        finally:
            # Only cancellation (the loop shutting down) or a bug ends the task: no request
            # may wait for it forever, and `loop_committer` starts another.
            stopped = RuntimeError("the usage committer stopped")
            _fail(batch, stopped)
            _fail(self._pending, stopped)
            self._pending.clear()
            await self._close()

    @property
    def running(self) -> bool:
        return not self._task.done()

    async def _write(self, ops: list[usage.Op]) -> list[usage.Answer | None]:
        answers: list[usage.Answer | None] = [None] * len(ops)
        todo = _firsts_of_keys(ops)
        attempts = 0  # sent again, nothing written (a dead connection, a vanished key)
        while todo:
            if self._connection is None or self._connection.closed:
                # Connected as the engine's connections are (a bounded connect and
                # statement, TCP keepalives), and named for pg_stat_activity.
                self._connection = await psycopg.AsyncConnection.connect(
                    self.services.database.driver_url,
                    **self.services.database.connect_kwargs,
                    application_name=COMMITTER_NAME,
                )
            try:
                with tracing.span("usage.batch", **{"billfold.batch_size": len(todo)}):
                    written = await self._bounded(
                        usage.write_pipelined_async(
                            self._connection, [ops[i] for i in todo], self.services.key_policy
                        )
                    )
            except usage.KeysTaken as taken:
                todo = _without_taken(ops, todo, taken)
                continue
            except usage.NotWritten:
                await self._close()
                attempts += 1
                if attempts > 1:  # a new connection failed too: the database is down
                    raise
                continue
            if written is None:
                # A charge's wallet crosses its auto-funding threshold: the charges go
                # through `write_batch`, which announces it; hold operations, careful path.
                charged = [i for i in todo if isinstance(ops[i], usage.Charge)]
                charges = [cast(usage.Charge, ops[i]) for i in charged]
                done = await anyio.to_thread.run_sync(write_batch, self.services, charges)
                for i, answer in zip(charged, done, strict=True):
                    answers[i] = answer
                break
            for i, answer in zip(todo, written, strict=True):
                answers[i] = answer
            break
        return answers

    async def _bounded(self, write: Awaitable[T]) -> T:
        """`write`, or an OperationalError (an outage: 503) if the database has not
        answered within the statement timeout and a second: a server that stalls on an
        open connection must not hold every waiting request with it. The connection is
        dropped; whether the batch committed is unknown, so none of it is answered 2xx
        (its requests' retries with their keys find out)."""
        statement_ms = self.services.settings.db_statement_timeout_ms
        limit = statement_ms / 1000 + 1.0 if statement_ms else None
        try:
            return await asyncio.wait_for(write, limit)
        except TimeoutError as exc:
            connection, self._connection = self._connection, None
            if connection is not None:
                await connection.close()
            raise psycopg.OperationalError(
                f"the database did not answer a usage batch within {limit} s"
            ) from exc

    async def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and not connection.closed:
            await connection.close()


def loop_commits(app: Services) -> bool:
    """Whether a write from an event loop goes to its loop committer: on PostgreSQL, with
    group commit on, on real time (a test clock's writes run in the caller's thread, where
    the account's clock is set)."""
    return (
        not app.database.is_sqlite
        and app.settings.usage_group_commit
        and current_test_clock() is None
    )


def loop_committer(app: Services) -> LoopCommitter:
    """The committer of `app` on the running event loop (started on first use)."""
    loop = asyncio.get_running_loop()
    key = (id(app), id(loop))
    found = _loop_committers.get(key)
    if found is None or found.services is not app or found.loop is not loop or not found.running:
        # Committers of loops that are gone: their connections close with them.
        for stale in [k for k, c in _loop_committers.items() if c.loop.is_closed()]:
            del _loop_committers[stale]
        found = _loop_committers[key] = LoopCommitter(app, loop)
    return found


_loop_committers: dict[tuple[int, int], LoopCommitter] = {}


def charges_committed(app: Services) -> int:
    """How many charges this process's committers (thread and loops) took for `app`."""
    found = _committers.get(id(app))
    threaded = found.charges if found is not None and found.services is app else 0
    looped = [c.charges for c in list(_loop_committers.values()) if c.services is app]
    return threaded + sum(looped)


def _fail(batch: list[tuple[usage.Op, asyncio.Future[Any]]], exc: BaseException) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(exc)


def _firsts_of_keys(charges: Sequence[usage.Op]) -> list[int]:
    """The charges to write: all but the in-batch twins of a keyed charge (the careful path
    replays the first)."""
    todo: list[int] = []
    keys: set[tuple[str, str]] = set()
    for i, charge in enumerate(charges):
        if charge.key is not None:
            if (charge.scope, charge.key) in keys:
                continue
            keys.add((charge.scope, charge.key))
        todo.append(i)
    return todo


def _without_taken(
    charges: Sequence[usage.Op], todo: list[int], taken: usage.KeysTaken
) -> list[int]:
    return [i for i in todo if (charges[i].scope, charges[i].key or "") not in taken.taken]


def write_batch(app: Services, charges: Sequence[usage.Charge]) -> list[usage.Answer | None]:
    """Write `charges` in one transaction; None for each whose key was already stored
    (those were not written: the transaction is retried without them). On PostgreSQL over
    psycopg's pipeline (`usage.write_pipelined`) on a pooled connection."""
    answers: list[usage.Answer | None] = [None] * len(charges)
    todo = _firsts_of_keys(charges)
    while todo:
        try:
            written = _write(app, [charges[i] for i in todo])
        except usage.KeysTaken as taken:
            todo = _without_taken(charges, todo, taken)
            continue
        for i, answer in zip(todo, written, strict=True):
            answers[i] = answer
        break
    return answers


def _write(app: Services, charges: list[usage.Charge]) -> list[usage.Answer | None]:
    written: list[usage.Answer | None] | None = None
    if not app.database.is_sqlite:
        try:
            with app.database.driver_connection() as connection:
                written = usage.write_pipelined(connection, charges, app.key_policy)
        except usage.NotWritten:
            # Nothing was written (a pooled connection that had died, a vanished key):
            # once more, on a connection the pool checks first.
            with app.database.driver_connection() as connection:
                written = usage.write_pipelined(connection, charges, app.key_policy)
    if written is None:  # SQLite, or a wallet crossing its auto-funding threshold
        with app.database.transaction() as session:
            return list(usage.write(session, charges, app.key_policy))
    return written


_committers: dict[int, ChargeCommitter] = {}
_committers_lock = threading.Lock()


def committer(app: Services) -> ChargeCommitter:
    """This process's committer for `app` (started on first use, again after a fork)."""
    found = _committers.get(id(app))
    if found is not None and found.services is app and found.pid == os.getpid():
        return found
    with _committers_lock:
        found = _committers.get(id(app))
        if found is None or found.services is not app or found.pid != os.getpid():
            found = ChargeCommitter(app)
            _committers[id(app)] = found
        return found


__all__ = [
    "MAX_BATCH",
    "ChargeCommitter",
    "LoopCommitter",
    "charges_committed",
    "committer",
    "loop_commits",
    "loop_committer",
    "write_batch",
]
