"""Statements sent to PostgreSQL together, in one write, and answered together.

psycopg's pipeline sends each statement the moment it is executed, and a transaction adds
exchanges of its own (BEGIN before, a closing sync after): a usage batch cost nine sends
and four round trips to the server, each send waking the server's backend. Here a group of
statements goes as one write with one Sync at its end, over libpq's pipeline mode through
psycopg's own libpq wrapper (`psycopg.pq`) and adapters (`psycopg.adapt.Transformer`): a
transaction of two decisions is two round trips (BEGIN, the lock, the probe; then the
write and COMMIT), whatever the number of statements.

A statement is prepared once per connection, with its parameters' types left to the
server (every parameter goes as text; the statement casts what it needs), and named after
what it is. A statement that fails skips the rest of its group (PostgreSQL's pipeline);
its error is raised as psycopg would raise it, and an open transaction is then in the
failed state, for the caller to roll back.

Only for a connection nobody else uses meanwhile (the usage committer's own).
"""

from __future__ import annotations

import asyncio
import re
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import pq
from psycopg.abc import Buffer
from psycopg.adapt import PyFormat, Transformer

_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%s|%%")


@dataclass(frozen=True)
class Statement:
    """A statement with psycopg's placeholders (`%s` or `%(name)s`), numbered for the
    server (`$1`…) once, when the module that sends it is loaded."""

    name: bytes
    sql: bytes
    parameters: tuple[str, ...] | int  # the names, in order; or how many `%s`

    @classmethod
    def of(cls, name: str, sql: str) -> Statement:
        names: list[str] = []
        positional = 0

        def number(match: re.Match[str]) -> str:
            nonlocal positional
            if match.group(0) == "%%":
                return "%"
            if match.group(1) is None:
                positional += 1
                return f"${positional}"
            if match.group(1) not in names:
                names.append(match.group(1))
            return f"${names.index(match.group(1)) + 1}"

        numbered = _PLACEHOLDER.sub(number, sql)
        if names and positional:
            raise ValueError("a statement takes named or positional parameters, not both")
        return cls(f"billfold_{name}".encode(), numbered.encode(), tuple(names) or positional)

    def values(self, parameters: Sequence[Any] | Mapping[str, Any]) -> list[Any]:
        if not self.parameters:
            return []
        if isinstance(self.parameters, int):
            if isinstance(parameters, Mapping) or len(parameters) != self.parameters:
                raise TypeError(f"{self.name!r} takes {self.parameters} parameters")
            return list(parameters)
        if not isinstance(parameters, Mapping):
            raise TypeError(f"{self.name!r} takes named parameters")
        return [parameters[name] for name in self.parameters]


BEGIN = b"BEGIN"
COMMIT = b"COMMIT"
ROLLBACK = b"ROLLBACK"

# A statement and its parameters, or one of the commands above.
Sent = tuple[Statement, Sequence[Any] | Mapping[str, Any]] | bytes

_prepared: weakref.WeakKeyDictionary[psycopg.AsyncConnection[Any], set[bytes]] = (
    weakref.WeakKeyDictionary()
)


async def exchange(
    connection: psycopg.AsyncConnection[Any], statements: Sequence[Sent]
) -> list[list[tuple[Any, ...]]]:
    """Send `statements` in one write with a Sync after them; each one's rows (empty for a
    command), once the server answered them all. Raises the first statement's error that
    failed (the ones after it did not run). An exchange cut short (the connection lost, the
    task cancelled) closes the connection: what the server did with it is not known, and
    its answers would be read as the next exchange's."""
    pgconn = connection.pgconn
    if connection.closed or pgconn.pipeline_status != pq.PipelineStatus.OFF:
        raise psycopg.OperationalError("the connection is closed or out of step")
    transformer = Transformer.from_context(connection)
    prepared = _prepared.setdefault(connection, set())
    preparing: list[bytes] = []
    messages: list[tuple[bytes, bytes | None, Sequence[Buffer | None] | None]] = []
    for sent in statements:  # every parameter dumped before anything is sent
        if isinstance(sent, bytes):
            messages.append((sent, None, None))
            continue
        statement, parameters = sent
        sql = None
        if statement.name not in prepared and statement.name not in preparing:
            sql = statement.sql
            preparing.append(statement.name)
        values = statement.values(parameters)
        dumped = transformer.dump_sequence(values, [PyFormat.TEXT] * len(values))
        messages.append((statement.name, sql, dumped))
    completed = False
    pgconn.enter_pipeline_mode()
    try:
        for name, sql, payload in messages:
            if payload is None:
                pgconn.send_query_params(name, None)
                continue
            if sql is not None:
                pgconn.send_prepare(name, sql)
            pgconn.send_query_prepared(name, payload)
        pgconn.pipeline_sync()
        await _flush(pgconn)
        results = await _results(pgconn)
        pgconn.exit_pipeline_mode()
        completed = True
    finally:
        if not completed:
            pgconn.finish()
    # Each prepare answers first, in the order sent; then the statements' answers.
    failed: pq.abc.PGresult | None = None
    rows: list[list[tuple[Any, ...]]] = []
    answers = iter(results)
    for name, sql, _ in messages:
        if sql is not None:
            outcome = next(answers)
            if outcome.status == pq.ExecStatus.COMMAND_OK:
                prepared.add(name)
            elif failed is None:
                failed = outcome
        answer = next(answers)
        if answer.status == pq.ExecStatus.FATAL_ERROR and failed is None:
            failed = answer
        if answer.status == pq.ExecStatus.TUPLES_OK:
            transformer.set_pgresult(answer)
            rows.append(transformer.load_rows(0, answer.ntuples, tuple))
        else:
            rows.append([])
    if failed is not None:
        raise psycopg.errors.error_from_result(failed, encoding=connection.info.encoding)
    return rows


async def _flush(pgconn: pq.abc.PGconn) -> None:
    while pgconn.flush():  # 1: some is left to send
        # Read what the server answers meanwhile: it may not read on while its own answers
        # wait (a large group).
        if await _ready(pgconn.socket, write=True):
            pgconn.consume_input()


async def _results(pgconn: pq.abc.PGconn) -> list[pq.abc.PGresult]:
    """Each command's last result, up to the Sync's."""
    results: list[pq.abc.PGresult] = []
    last: pq.abc.PGresult | None = None
    while True:
        while pgconn.is_busy():
            await _ready(pgconn.socket, write=False)
            pgconn.consume_input()
        result = pgconn.get_result()
        if result is None:  # the end of one command's results
            if last is not None:
                results.append(last)
                last = None
        elif result.status == pq.ExecStatus.PIPELINE_SYNC:
            return results
        else:
            last = result


async def _ready(fd: int, *, write: bool) -> bool:
    """Until `fd` can be read (True), or, with `write`, written (False)."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[bool] = loop.create_future()

    def wake(readable: bool) -> None:
        if not ready.done():
            ready.set_result(readable)

    loop.add_reader(fd, wake, True)
    if write:
        loop.add_writer(fd, wake, False)
    try:
        return await ready
    finally:
        loop.remove_reader(fd)
        if write:
            loop.remove_writer(fd)
