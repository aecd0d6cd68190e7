"""The usage committer on PostgreSQL: psycopg's pipeline, a key stored by another
transaction while a batch is on its way, and a committer whose connection died.

PostgreSQL only: the pipelined writer and the event-loop committer exist only there (the
`postgres` marker deselects the SQLite instances).
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from billfold import db
from billfold.application import charging
from billfold.clock import now
from billfold.db import unavailable
from billfold.services import Services
from billfold.wallet import usage
from tests.helpers import Api, decimal_json

# The SQLite instances of these tests are deselected (tests/conftest.py).
pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_services(services: Services, backend: str) -> Services:
    assert backend == "postgresql"
    return services


def _charge(account_id: str, key: str | None, amount: int = 1) -> usage.Charge:
    return usage.Charge(
        account_id=account_id,
        amount_micros=amount * 1_000_000,
        usecase="tokens",
        description=None,
        metadata={"n": 1},
        created_at=now(),
        key=key,
        scope="operator",
        fingerprint="f",
    )


class _KeyHolder(threading.Thread):
    """Another transaction stores `key`, waits until a writer's INSERT of the same key is
    blocked on it (seen in pg_stat_activity), then commits."""

    def __init__(self, dsn: str, key: str) -> None:
        super().__init__(daemon=True)
        self.dsn, self.key = dsn, key
        self.ready = threading.Event()
        self.saw_the_insert_wait = False

    def run(self) -> None:
        with psycopg.connect(self.dsn) as other, psycopg.connect(self.dsn) as watch:
            watch.autocommit = True
            other.execute(
                "INSERT INTO idempotency_keys (scope, key, fingerprint, status, created_at,"
                " locked_at, expires_at) VALUES ('operator', %s, 'other', 'in_progress',"
                " now(), now(), now() + interval '1 day')",
                (self.key,),
            )
            self.ready.set()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not self.saw_the_insert_wait:
                waiting = watch.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock' AND query LIKE %s",
                    ("%INSERT INTO idempotency_keys%",),
                ).fetchone()
                self.saw_the_insert_wait = bool(waiting and waiting[0])
                time.sleep(0.02)
            other.commit()


def _race(services: Services, write: Callable[[list[usage.Charge]], Any], api: Api) -> None:
    agent = api.new_agent()
    agent.fund(10)
    key = f"race-{uuid.uuid4()}"
    holder = _KeyHolder(services.database.driver_url, key)
    holder.start()
    assert holder.ready.wait(10)
    # The probe cannot see the other transaction's key; the INSERT waits for it, then
    # fails when it commits: the batch reports the key taken and writes nothing.
    with pytest.raises(usage.KeysTaken) as taken:
        write([_charge(agent.account_id, key), _charge(agent.account_id, None)])
    holder.join(10)
    assert holder.saw_the_insert_wait  # the INSERT's clash, not the probe, found it
    assert taken.value.taken == {("operator", key)}
    assert agent.balance() == 10
    # The same batch without that key goes through.
    written = write([_charge(agent.account_id, None)])
    assert [a.status_code for a in written] == [201]
    assert agent.balance() == 9
    assert api.ledger_check(agent.account_id)["consistent"] is True


def test_a_key_stored_meanwhile_by_another_transaction_is_reported_taken(
    api: Api, pg_services: Services
) -> None:
    def write(charges: list[usage.Charge]) -> Any:
        with pg_services.database.driver_connection() as connection:
            return usage.write_pipelined(connection, charges, pg_services.key_policy)

    _race(pg_services, write, api)


def test_the_event_loop_writer_reports_a_key_stored_meanwhile_as_taken(
    api: Api, pg_services: Services
) -> None:
    def write(charges: list[usage.Charge]) -> Any:
        async def run() -> Any:
            async with await psycopg.AsyncConnection.connect(
                pg_services.database.driver_url
            ) as connection:
                return await usage.write_pipelined_async(
                    connection, charges, pg_services.key_policy
                )

        return asyncio.run(run())

    _race(pg_services, write, api)


def _terminate_committers(services: Services) -> int:
    with psycopg.connect(services.database.driver_url, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = %s AND datname = current_database()",
            (charging.COMMITTER_NAME,),
        ).fetchall()
    return len(rows)


def test_a_committer_whose_connection_died_reconnects_without_failing_a_charge(
    api: Api, pg_services: Services
) -> None:
    agent = api.new_agent()
    agent.fund(10)
    first = api.charge_usage(agent.account_id, "1", key=f"c-{uuid.uuid4()}")
    assert first.status_code == 201, first.text
    assert _terminate_committers(pg_services) >= 1  # the server's committer connection
    time.sleep(0.2)
    # The dead connection is found on the batch's first round trip, before anything was
    # written: the batch goes again on a new connection, and the client sees a 201.
    statuses = [
        api.charge_usage(agent.account_id, "1", key=f"c-{uuid.uuid4()}").status_code
        for _ in range(3)
    ]
    assert statuses == [201, 201, 201]
    assert agent.balance() == 6
    assert decimal_json(first)["data"]["balance_after"] == 9
    assert api.ledger_check(agent.account_id)["consistent"] is True


def test_a_batch_whose_wallet_update_misses_a_wallet_is_rolled_back_whole(
    api: Api, pg_services: Services
) -> None:
    """The write statement counts the wallets it updated: one fewer than planned (a state
    the lock should make impossible) fails it, and no ledger row or key stays behind."""
    agent = api.new_agent()
    agent.fund(10)
    key = f"guard-{uuid.uuid4()}"
    charges = [_charge(agent.account_id, key)]
    with pg_services.database.driver_connection() as connection:
        rows = connection.execute(*usage._lock_statement(charges)).fetchall()
        plan = usage._plan(charges, usage._wallet_states(rows))
        statement, parameters = usage._write_statement(charges, plan, pg_services.key_policy)
        with pytest.raises(psycopg.errors.DivisionByZero):
            connection.execute(statement, {**parameters, "w_count": 2})
        connection.rollback()
        stored = connection.execute(
            "SELECT count(*) FROM idempotency_keys WHERE key = %s", (key,)
        ).fetchone()
        connection.rollback()
    assert stored == (0,)
    assert agent.balance() == 10
    assert api.ledger_check(agent.account_id)["consistent"] is True


def test_only_a_committed_batch_is_answered() -> None:
    """A clash on a key that is gone by the time it is looked for: everything was rolled
    back, so the batch is to be sent again, never answered as if written."""
    answer = usage.Answer(201, b"{}")
    plan = usage._Plan([answer], [], [], [], {})
    assert usage._outcome(plan, set(), committed=True) == [answer]
    with pytest.raises(usage.KeysTaken):
        usage._outcome(plan, {("operator", "k")}, committed=False)
    with pytest.raises(usage.NotWritten):
        usage._outcome(plan, set(), committed=False)
    crossing = usage._Plan([answer], [], [], [], {"acct": (1, 2)})
    assert usage._outcome(crossing, set(), committed=False) is None


def test_a_stopped_committer_fails_its_waiting_charges_and_is_replaced(
    api: Api, pg_services: Services
) -> None:
    agent = api.new_agent()
    agent.fund(10)

    async def scenario() -> tuple[list[BaseException | None], int]:
        first = charging.loop_committer(pg_services)
        waiting = [
            asyncio.ensure_future(first.submit(_charge(agent.account_id, None))) for _ in range(3)
        ]
        first._task.cancel()  # as a bug or the loop's shutdown would end it
        _, pending = await asyncio.wait(waiting, timeout=10)
        assert not pending  # nobody waits forever
        assert not first.running
        with pytest.raises(RuntimeError):
            await first.submit(_charge(agent.account_id, None))
        second = charging.loop_committer(pg_services)
        assert second is not first and second.running
        answer = await second.submit(_charge(agent.account_id, None))
        assert answer is not None
        return [w.exception() for w in waiting], answer.status_code

    errors, status = asyncio.run(scenario())
    assert status == 201
    assert all(isinstance(e, RuntimeError) for e in errors)
    assert agent.balance() == 9  # the failed ones wrote nothing
    assert api.ledger_check(agent.account_id)["consistent"] is True


def _rows_written(services: Services, account_id: str) -> list[Any]:
    with psycopg.connect(services.database.driver_url) as connection:
        transactions = connection.execute(
            "SELECT kind, type, amount_micros, balance_after_micros, usecase, description,"
            " metadata::text, status, created_at FROM ledger_transactions"
            " WHERE account_id = %s AND kind = 'usage_charge' ORDER BY balance_after_micros DESC",
            (account_id,),
        ).fetchall()
        postings = connection.execute(
            "SELECT p.ledger_account, p.amount_micros FROM ledger_postings AS p"
            " JOIN ledger_transactions AS t ON t.id = p.transaction_id"
            " WHERE t.account_id = %s AND t.kind = 'usage_charge'"
            " ORDER BY t.balance_after_micros DESC, p.ledger_account",
            (account_id,),
        ).fetchall()
        keys = connection.execute(
            "SELECT response_status, fingerprint, replace(response_body, %s, 'ACCT')"
            " FROM idempotency_keys WHERE key LIKE %s ORDER BY key",
            (account_id, f"{account_id}-%"),
        ).fetchall()
    return [transactions, postings, [(s, f, re.sub(r"txn_\w+", "TXN", b)) for s, f, b in keys]]


def _unpackable(values: object) -> str:
    raise db.Unpackable


@pytest.mark.parametrize("count", [1, 70])
def test_a_batch_written_as_packed_columns_writes_what_the_arrays_write(
    api: Api, pg_services: Services, monkeypatch: pytest.MonkeyPatch, count: int
) -> None:
    """The columns packed into one text each: the same rows, keys and answers as the arrays
    write (exact decimals, nulls, empty and unusual text, times included)."""
    at = now()
    written = []
    for packed in (True, False):
        if not packed:
            monkeypatch.setattr(db, "packed_column", _unpackable)
        agent = api.new_agent()
        agent.fund(100)
        charges = [
            usage.Charge(
                agent.account_id,
                n + 1,
                "tokens" if n % 5 else "« ünïcode » \\ \"quoted\" 'single' , {braces}",
                [None, "", f"call {n} — “quoted”", "NULL", "a\\tb"][n % 5],
                None if n % 3 == 0 else {"n": n, "exact": Decimal("0.10000000000000000001")},
                at,
                key=f"{agent.account_id}-{n:03}",
                scope="operator",
                fingerprint=f"f{n}",
            )
            for n in range(count)
        ]
        with pg_services.database.driver_connection() as connection:
            answers = usage.write_pipelined(connection, charges, pg_services.key_policy)
        assert answers is not None and {a.status_code for a in answers if a} == {201}
        written.append(_rows_written(pg_services, agent.account_id))
        assert api.ledger_check(agent.account_id)["consistent"] is True
    assert written[0] == written[1]
    assert len(written[0][0]) == count and len(written[0][2]) == count


def test_every_array_of_a_write_statement_is_sent_packed() -> None:
    for statement in (usage._WRITE_PG, usage._WRITE_HOLDS_PG):
        form = usage._PACKED[statement]
        assert "[]" in statement
        assert not re.search(r"%\(\w+\)s::\w+\[\]", form.sql)  # none left as an array
        assert set(form.arrays) == set(re.findall(r"%\((\w+)\)s::\w+\[\]", statement))
    at = datetime(2026, 12, 6, 20, 0, 0, 123456, tzinfo=UTC)
    assert db.packed_column([1, None, -7]) == "1\x1f\x1e\x1f-7"
    assert db.packed_column([True, False, None]) == "t\x1ff\x1f\x1e"
    assert db.packed_column(["x", None, "y"]) == "x\x1f\x1e\x1fy"
    time = at.isoformat()
    assert db.packed_column([at, None, at]).split("\x1f") == [time, "\x1e", time]
    assert db.packed_column([]) == ""
    for unpackable in ([Decimal("1.5")], [1, "1"], ["a\x1fb"]):
        with pytest.raises(db.Unpackable):
            db.packed_column(unpackable)


def test_a_column_is_packed_only_when_it_splits_back_to_its_values() -> None:
    assert db.packed(["a", None, "", "b c"]) == "a\x1f\x1e\x1f\x1fb c"
    assert db.packed([]) == ""
    for unpackable in (["a\x1fb"], ["a", "b\x1e"], [""]):
        with pytest.raises(db.Unpackable):
            db.packed(unpackable)


def test_a_batch_with_a_value_it_cannot_pack_goes_as_arrays(pg_services: Services) -> None:
    wallet = usage._wallet_states([("acct", "USD", 0, 0, 10**12, False, False, None)])
    for description, packed in (("plain", True), ("", False), ("odd \x1f", False)):
        charges = [dataclasses.replace(_charge("acct", None), description=description)]
        plan = usage._plan(charges, dict(wallet))
        statement, _ = usage._write_statement(charges, plan, pg_services.key_policy)
        assert ("string_to_array" in statement) is packed


def test_a_batch_the_database_does_not_answer_in_time_fails_as_an_outage(
    pg_services: Services,
) -> None:
    """A server that stalls on an open connection: the batch gives up after the statement
    timeout and a second, as an OperationalError (answered 503), not a hang."""
    settings = pg_services.settings.model_copy(update={"db_statement_timeout_ms": 100})
    services = dataclasses.replace(pg_services, settings=settings)

    async def scenario() -> float:
        committer = charging.LoopCommitter(services, asyncio.get_running_loop())
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError) as raised:
            await committer._bounded(asyncio.sleep(30))
        assert unavailable(raised.value)
        committer._task.cancel()
        return time.monotonic() - started

    assert 1.0 <= asyncio.run(scenario()) < 2.0


def test_the_committers_cached_plans_look_rows_up_by_key_whatever_the_tables_sizes(
    api: Api, pg_services: Services
) -> None:
    """A plan cached while idempotency_keys and wallets are small must not scan them whole
    once they have grown: the committer's connection is left keyed plans only, even the
    generic ones PostgreSQL caches for its prepared statements."""
    agent = api.new_agent()
    agent.fund(50)
    database = pg_services.database

    async def scenario() -> list[str]:
        async with await psycopg.AsyncConnection.connect(
            database.driver_url,
            **{**database.connect_kwargs, "options": "-c plan_cache_mode=force_generic_plan"},
        ) as connection:
            for _ in range(7):
                written = await usage.write_pipelined_async(
                    connection,
                    [_charge(agent.account_id, f"plan-{uuid.uuid4()}") for _ in range(3)],
                    pg_services.key_policy,
                )
                assert written is not None and {a.status_code for a in written} == {201}
            plans = []
            for name, arguments in [
                ("billfold_usage_lock", "ARRAY['x']"),
                ("billfold_usage_taken_packed", "'operator', 'k'"),
            ]:
                cursor = await connection.execute(f"EXPLAIN EXECUTE {name}({arguments})")
                plans.append("\n".join(row[0] for row in await cursor.fetchall()))
            return plans

    lock, taken = asyncio.run(scenario())
    for plan in (lock, taken):
        assert "Seq Scan" not in plan and "Hash Join" not in plan, plan
    assert "pk_wallets" in lock  # an index scan, or a bitmap scan of the index
    assert "Index Only Scan using pk_idempotency_keys" in taken
    assert agent.balance() == 50 - 21
