"""pgwire: statements sent together, prepared once per connection, failing as a group."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import pytest

from billfold import pgwire

pytestmark = pytest.mark.postgres

ADD = pgwire.Statement.of("test_add", "INSERT INTO wire (n, note) VALUES (%(n)s::int, %(note)s)")
COUNT = pgwire.Statement.of("test_count", "SELECT count(*), coalesce(sum(n), 0) FROM wire")
DIVIDE = pgwire.Statement.of("test_divide", "SELECT 1 / %s::int")
ECHO = pgwire.Statement.of("test_echo", "SELECT %s::text, length(%s::text)")
BROKEN = pgwire.Statement.of("test_broken", "SELEC nonsense")


def _run(
    postgres_url: str, scenario: Callable[[psycopg.AsyncConnection[Any]], Awaitable[Any]]
) -> Any:
    dsn = postgres_url.replace("postgresql+psycopg://", "postgresql://")

    async def main() -> Any:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as connection:
            await connection.execute("CREATE TEMPORARY TABLE wire (n int, note text)")
            return await scenario(connection)

    return asyncio.run(main())


def test_statements_are_numbered_once() -> None:
    named = pgwire.Statement.of("n", "SELECT %(a)s, %(b)s, %(a)s, 100 %% 7")
    assert named.sql == b"SELECT $1, $2, $1, 100 % 7"
    assert named.values({"b": 2, "a": 1, "c": 3}) == [1, 2]
    positional = pgwire.Statement.of("p", "SELECT %s, %s")
    assert positional.sql == b"SELECT $1, $2"
    assert positional.values(("x", "y")) == ["x", "y"]
    with pytest.raises(ValueError, match="not both"):
        pgwire.Statement.of("m", "SELECT %s, %(a)s")


def test_a_group_commits_and_answers_each_statement(postgres_url: str) -> None:
    async def scenario(connection: psycopg.AsyncConnection[Any]) -> None:
        answers = await pgwire.exchange(
            connection,
            [
                pgwire.BEGIN,
                (ADD, {"n": 2, "note": None}),
                (ADD, {"n": 3, "note": "é\"'\\"}),
                (COUNT, {}),
                pgwire.COMMIT,
            ],
        )
        assert answers == [[], [], [], [(2, 5)], []]
        assert connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        rows = await (await connection.execute("SELECT n, note FROM wire ORDER BY n")).fetchall()
        assert rows == [(2, None), (3, "é\"'\\")]

    _run(postgres_url, scenario)


def test_a_failing_statement_skips_the_rest_and_leaves_the_transaction_to_roll_back(
    postgres_url: str,
) -> None:
    async def scenario(connection: psycopg.AsyncConnection[Any]) -> None:
        with pytest.raises(psycopg.errors.DivisionByZero):
            await pgwire.exchange(
                connection,
                [
                    pgwire.BEGIN,
                    (ADD, {"n": 1, "note": "a"}),
                    (DIVIDE, (0,)),
                    (ADD, {"n": 2, "note": "b"}),
                ],
            )
        status = connection.info.transaction_status
        assert status == psycopg.pq.TransactionStatus.INERROR
        await pgwire.exchange(connection, [pgwire.ROLLBACK])
        assert await pgwire.exchange(connection, [(COUNT, {})]) == [[(0, 0)]]
        # The connection is as good as new, its statements still prepared.
        assert await pgwire.exchange(connection, [(DIVIDE, (1,))]) == [[(1,)]]

    _run(postgres_url, scenario)


def test_a_statement_is_prepared_once_per_connection(postgres_url: str) -> None:
    async def scenario(connection: psycopg.AsyncConnection[Any]) -> None:
        for n in range(3):  # preparing it again would fail: "already exists"
            assert await pgwire.exchange(connection, [(ECHO, (str(n), str(n)))]) == [[(str(n), 1)]]
        prepared = await (
            await connection.execute(
                "SELECT name FROM pg_prepared_statements WHERE name LIKE 'billfold_test_%'"
            )
        ).fetchall()
        assert prepared == [("billfold_test_echo",)]

    _run(postgres_url, scenario)


def test_a_statement_that_cannot_be_prepared_fails_each_time_and_harms_nothing_else(
    postgres_url: str,
) -> None:
    async def scenario(connection: psycopg.AsyncConnection[Any]) -> None:
        for _ in range(2):
            with pytest.raises(psycopg.errors.SyntaxError):
                await pgwire.exchange(connection, [(ECHO, ("a", "a")), (BROKEN, ())])
        assert await pgwire.exchange(connection, [(ECHO, ("b", "bb"))]) == [[("b", 2)]]

    _run(postgres_url, scenario)


def test_a_group_larger_than_the_sockets_buffers_goes_through(postgres_url: str) -> None:
    big = "x" * 4_000_000  # written while the server already answers the first ones

    async def scenario(connection: psycopg.AsyncConnection[Any]) -> None:
        answers = await pgwire.exchange(connection, [(ECHO, (str(n), big)) for n in range(6)])
        assert answers == [[(str(n), len(big))] for n in range(6)]

    _run(postgres_url, scenario)


def test_an_exchange_cut_short_closes_its_connection(postgres_url: str) -> None:
    """Its answers would otherwise be read as the next exchange's."""
    sleep = pgwire.Statement.of("test_sleep", "SELECT pg_sleep(%s::float8)")

    async def scenario(connection: psycopg.AsyncConnection[Any]) -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(pgwire.exchange(connection, [(sleep, ("5",))]), 0.2)
        assert connection.closed
        with pytest.raises(psycopg.OperationalError):
            await pgwire.exchange(connection, [(COUNT, {})])

    _run(postgres_url, scenario)
