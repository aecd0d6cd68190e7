"""The usage committer on PostgreSQL: psycopg's pipeline, a key stored by another
transaction while a batch is on its way, and a committer whose connection died.

PostgreSQL only: the pipelined writer and the event-loop committer exist only there (the
SQLite cases skip, saying so; nothing is missing).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from billfold.application import charging
from billfold.clock import now
from billfold.services import Services
from billfold.wallet import usage
from tests.helpers import Api, decimal_json


@pytest.fixture
def pg_services(services: Services, backend: str) -> Services:
    if backend != "postgresql":
        pytest.skip("the pipelined writer and the loop committer are PostgreSQL's")
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


def _hold_key_uncommitted(dsn: str, key: str, ready: threading.Event, go: threading.Event) -> None:
    """Another transaction stores `key`, waits for `go`, then commits."""
    with psycopg.connect(dsn) as other:
        other.execute(
            "INSERT INTO idempotency_keys (scope, key, fingerprint, status, created_at,"
            " locked_at, expires_at) VALUES ('operator', %s, 'other', 'in_progress',"
            " now(), now(), now() + interval '1 day')",
            (key,),
        )
        ready.set()
        go.wait(10)
        other.commit()


def _race(services: Services, write: Callable[[list[usage.Charge]], Any], api: Api) -> None:
    agent = api.new_agent()
    agent.fund(10)
    key = f"race-{uuid.uuid4()}"
    ready, go = threading.Event(), threading.Event()
    holder = threading.Thread(
        target=_hold_key_uncommitted, args=(services.database.driver_url, key, ready, go)
    )
    holder.start()
    assert ready.wait(10)
    # The probe cannot see the other transaction's key; the INSERT waits for it, then
    # fails when it commits: the batch reports the key taken and writes nothing.
    threading.Timer(0.3, go.set).start()
    with pytest.raises(usage.KeysTaken) as taken:
        write([_charge(agent.account_id, key), _charge(agent.account_id, None)])
    holder.join(10)
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
