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

import os
import queue
import threading
from collections.abc import Sequence
from concurrent.futures import Future

from billfold.db import HeldConnection
from billfold.services import Services
from billfold.wallet import usage

MAX_BATCH = 512
IDLE_RELEASE_SECONDS = 1.0  # an idle committer gives its connection back to the pool

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
        held = None if self.services.database.is_sqlite else HeldConnection(self.services.database)
        while True:
            if held is not None and held.held:
                try:
                    first = self._queue.get(timeout=IDLE_RELEASE_SECONDS)
                except queue.Empty:
                    held.release()  # idle: the connection goes back to the pool
                    continue
            else:
                first = self._queue.get()
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._commit(batch, held)

    def _commit(self, batch: list[_Pending], held: HeldConnection | None) -> None:
        try:
            answers = write_batch(self.services, [charge for charge, _ in batch], held)
        except BaseException as exc:  # every waiting request gets the failure
            for _, future in batch:
                future.set_exception(exc)
            return
        with self._counted:
            self.batches += 1
            self.charges += len(batch)
        for (_, future), answer in zip(batch, answers, strict=True):
            future.set_result(answer)


def write_batch(
    app: Services, charges: Sequence[usage.Charge], held: HeldConnection | None = None
) -> list[usage.Answer | None]:
    """Write `charges` in one transaction; None for each whose key was already stored
    (those were not written: the transaction is retried without them). On PostgreSQL over
    psycopg's pipeline (`usage.write_pipelined`), on `held` if given."""
    answers: list[usage.Answer | None] = [None] * len(charges)
    todo: list[int] = []
    keys: set[tuple[str, str]] = set()
    for i, charge in enumerate(charges):
        if charge.key is not None:
            if (charge.scope, charge.key) in keys:
                continue  # a twin in the same batch: the careful path replays the first
            keys.add((charge.scope, charge.key))
        todo.append(i)
    while todo:
        try:
            written = _write(app, [charges[i] for i in todo], held)
        except usage.KeysTaken as taken:
            todo = [i for i in todo if (charges[i].scope, charges[i].key or "") not in taken.taken]
            continue
        for i, answer in zip(todo, written, strict=True):
            answers[i] = answer
        break
    return answers


def _write(
    app: Services, charges: list[usage.Charge], held: HeldConnection | None
) -> list[usage.Answer]:
    written = None
    if not app.database.is_sqlite:
        if held is None:
            with app.database.driver_connection() as connection:
                written = usage.write_pipelined(connection, charges, app.key_policy)
        else:
            with held.use() as connection:
                written = usage.write_pipelined(connection, charges, app.key_policy)
    if written is None:  # SQLite, or a wallet crossing its auto-funding threshold
        with app.database.transaction() as session:
            written = usage.write(session, charges, app.key_policy)
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


__all__ = ["MAX_BATCH", "ChargeCommitter", "committer", "write_batch"]
