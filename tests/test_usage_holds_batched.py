"""Usage holds and captures in the usage batch on PostgreSQL: they write what the careful
path writes, leave to it what they cannot settle plainly, and race safely.

PostgreSQL only (the `postgres` marker deselects the SQLite instances): the batch writer
and the event-loop committer exist only there. The hold routes on SQLite, and everything
the batch leaves alone, take the careful path, which tests/test_usage_holds.py covers on
both databases (on PostgreSQL through these routes, so through the batch).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from billfold import db
from billfold.application import charging
from billfold.application.usecases import holds as hold_usecases
from billfold.application.usecases.base import Call
from billfold.clock import now
from billfold.ledger.models import BUCKETS
from billfold.services import Services
from billfold.wallet import usage
from billfold.wallet.schemas import UsageHoldCaptureRequest, UsageHoldRequest
from tests.helpers import Agent, Api, decimal_json

pytestmark = pytest.mark.postgres

D = Decimal
METADATA = {"model": "m-1", "price": "0.000001", "exact": D("1.00000000000000000001")}


@pytest.fixture
def pg_services(services: Services, backend: str) -> Services:
    assert backend == "postgresql"
    return services


def _funded(api: Api) -> Agent:
    agent = api.new_agent()
    assert agent.fund(10).status_code == 200
    credit = api.admin_post(
        "/adjustments", {"account_id": agent.account_id, "amount": 2, "reason": "goodwill"}
    )
    assert credit.status_code == 201, credit.text
    return agent


def _hold_body(account_id: str, amount: str) -> dict[str, Any]:
    return {
        "account_id": account_id,
        "amount": amount,
        "usecase": "llm",
        "description": "a model call",
        "metadata": METADATA,
        "ttl_seconds": 600,
    }


def _books(services: Services, account_id: str) -> dict[str, Any]:
    """Everything the account's holds wrote, ids and times left out (a hold's id becomes
    `H`), in an order that does not depend on them."""
    with psycopg.connect(services.database.driver_url) as connection:
        hold_ids = [
            row[0]
            for row in connection.execute(
                "SELECT id FROM usage_holds WHERE account_id = %s", (account_id,)
            )
        ]

        def plain(value: Any) -> Any:
            text = str(value)
            for hold_id in hold_ids:
                text = text.replace(hold_id, "H")
            return text

        transactions = sorted(
            (
                kind,
                type_,
                amount,
                after,
                usecase,
                description,
                plain(reference),
                plain(metadata),
                status,
                tuple(
                    sorted(
                        connection.execute(
                            "SELECT ledger_account, amount_micros FROM ledger_postings"
                            " WHERE transaction_id = %s",
                            (txn_id,),
                        ).fetchall()
                    )
                ),
            )
            for txn_id, kind, type_, amount, after, usecase, description, reference, metadata, status in connection.execute(  # noqa: E501
                "SELECT id, kind, type, amount_micros, balance_after_micros, usecase,"
                " description, reference, metadata::text, status FROM ledger_transactions"
                " WHERE account_id = %s AND kind LIKE 'usage%%'",
                (account_id,),
            )
        )
        held = sorted(
            connection.execute(
                "SELECT amount_micros, captured_micros, subscription_micros,"
                " promotional_micros, purchased_micros, usecase, description, metadata::text,"
                " status, round(extract(epoch FROM expires_at - created_at)),"
                " resolved_at IS NOT NULL, release_transaction_id IS NOT NULL,"
                " charge_transaction_id IS NOT NULL"
                " FROM usage_holds WHERE account_id = %s",
                (account_id,),
            ).fetchall()
        )
        jobs = sorted(
            (kind, lane, status, plain(payload), attempts, most, clock, dedupe, run_at == until)
            for kind, lane, status, payload, attempts, most, clock, dedupe, run_at, until in connection.execute(  # noqa: E501
                "SELECT j.kind, j.lane, j.status, j.payload::text, j.attempts,"
                " j.max_attempts, j.test_clock_id, j.dedupe_key, j.run_at, h.expires_at"
                " FROM jobs AS j JOIN usage_holds AS h ON h.id = j.payload->>'hold_id'"
                " WHERE j.account_id = %s",
                (account_id,),
            )
        )
        wallet = connection.execute(
            "SELECT subscription_micros, promotional_micros, purchased_micros,"
            " balance_micros, auto_funding_armed FROM wallets WHERE account_id = %s",
            (account_id,),
        ).fetchone()
    return {"transactions": transactions, "holds": held, "jobs": jobs, "wallet": wallet}


def _json(body: bytes) -> Any:
    return json.loads(body, parse_float=Decimal)


def _shown(response_data: dict[str, Any]) -> dict[str, Any]:
    """An answer without what differs between two accounts (ids, times)."""
    dropped = {"id", "hold_id", "account_id", "expires_at", "created_at", "resolved_at"}
    return {
        key: (value is not None if key.endswith("transaction_id") else value)
        for key, value in response_data.items()
        if key not in dropped
    }


def _unpackable(values: object) -> str:
    raise db.Unpackable


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "arrays"])
def test_holds_and_captures_in_the_batch_write_what_the_careful_path_writes(
    api: Api, pg_services: Services, monkeypatch: pytest.MonkeyPatch, packed: bool
) -> None:
    """Written with each column packed into one text, or (a column that cannot be) as
    arrays: the same rows either way."""
    if not packed:
        monkeypatch.setattr(db, "packed_column", _unpackable)
    batched, careful = _funded(api), _funded(api)
    before = charging.charges_committed(pg_services)

    # Through the routes (the batch) for one account ...
    answers_batched = []
    first = api.admin_post(
        "/usage-holds", _hold_body(batched.account_id, "3"), key=f"k1-{uuid.uuid4()}"
    )
    second = api.admin_post("/usage-holds", _hold_body(batched.account_id, "4.5"))
    assert (first.status_code, second.status_code) == (201, 201), (first.text, second.text)
    answers_batched += [decimal_json(first)["data"], decimal_json(second)["data"]]
    for hold_id, body in (
        (answers_batched[0]["id"], {"amount": "1.25"}),
        (answers_batched[1]["id"], {}),
    ):
        captured = api.admin_post(f"/usage-holds/{hold_id}/capture", body, key=str(uuid.uuid4()))
        assert captured.status_code == 200, captured.text
        answers_batched.append(decimal_json(captured)["data"])
    # ... all four went through this server's loop committer ...
    assert charging.charges_committed(pg_services) - before == 4

    # ... and through the careful path's use cases for the other.
    answers_careful = []
    for amount in ("3", "4.5"):
        reply = hold_usecases.create_hold(
            pg_services,
            call=Call(),
            body=UsageHoldRequest.model_validate(_hold_body(careful.account_id, amount)),
        )
        assert reply.status_code == 201
        answers_careful.append(_json(reply.body)["data"])
    for hold_id, capture_amount in (
        (answers_careful[0]["id"], D("1.25")),
        (answers_careful[1]["id"], None),
    ):
        reply = hold_usecases.capture_hold(
            pg_services,
            call=Call(),
            hold_id=hold_id,
            body=UsageHoldCaptureRequest(amount=capture_amount),
        )
        assert reply.status_code == 200
        answers_careful.append(_json(reply.body)["data"])

    assert [_shown(a) for a in answers_batched] == [_shown(a) for a in answers_careful]
    assert answers_batched[0]["metadata"] == METADATA  # exact decimals kept
    assert answers_batched[2]["captured_amount"] == D("1.25")
    assert answers_batched[3]["status"] == "captured"
    books = _books(pg_services, batched.account_id)
    assert books == _books(pg_services, careful.account_id)
    assert len(books["transactions"]) == 6
    assert books["jobs"] == []  # neither path queues a job per hold: the sweep expires it
    assert batched.balance() == careful.balance() == D("12") - D("1.25") - D("4.5")
    for agent in (batched, careful):
        assert api.ledger_check(agent.account_id)["consistent"] is True


def test_concurrent_captures_of_one_hold_exactly_one_wins(api: Api) -> None:
    agent = _funded(api)
    for _ in range(3):
        hold = api.admin_post("/usage-holds", _hold_body(agent.account_id, "2"))
        assert hold.status_code == 201, hold.text
        hold_id = decimal_json(hold)["data"]["id"]

        def capture(_: int, hold_id: str = hold_id) -> Any:
            return api.admin_post(f"/usage-holds/{hold_id}/capture", {"amount": "1"})

        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(capture, range(8)))
        statuses = sorted(r.status_code for r in results)
        assert statuses == [200] + [409] * 7, [r.text for r in results]
        assert {r.json()["error"]["code"] for r in results if r.status_code == 409} == {
            "hold_not_active"
        }
    assert agent.balance() == 12 - 3
    assert api.ledger_check(agent.account_id)["consistent"] is True


def _op_key() -> dict[str, Any]:
    return {"key": f"op-{uuid.uuid4()}", "scope": "operator", "fingerprint": "f"}


def test_one_batch_carries_charges_holds_and_captures_and_leaves_the_rest_alone(
    api: Api, pg_services: Services
) -> None:
    agent = _funded(api)
    other = _funded(api)
    existing = api.admin_post("/usage-holds", _hold_body(agent.account_id, "2"))
    assert existing.status_code == 201, existing.text
    hold_id = decimal_json(existing)["data"]["id"]
    ops: list[usage.Op] = [
        usage.Charge(agent.account_id, 1_000_000, "tokens", None, None, now(), **_op_key()),
        usage.HoldCreate(
            agent.account_id, 3_000_000, "llm", None, None, timedelta(seconds=60), now()
        ),
        usage.HoldCapture(hold_id, None, 500_000, now(), **_op_key()),
        usage.HoldCapture(hold_id, None, 500_000, now(), **_op_key()),  # a second capture
        usage.HoldCapture(hold_id, None, 5_000_000, now()),  # more than held
        usage.HoldCapture("hold_unknown", None, None, now()),
        usage.HoldCapture(hold_id, other.account_id, None, now()),  # another account's
        usage.HoldCreate(agent.account_id, 99_000_000, "llm", None, None, timedelta(1), now()),
        usage.Charge(other.account_id, 2_000_000, "tokens", None, None, now()),
    ]

    async def batch() -> list[usage.Answer | None]:
        committer = charging.loop_committer(pg_services)
        batches = committer.batches
        answers = await asyncio.gather(*(committer.submit(op) for op in ops))
        assert committer.batches == batches + 1  # one batch, one transaction
        return list(answers)

    answers = asyncio.run(batch())
    statuses = [a.status_code if a is not None else None for a in answers]
    # Charged, held, captured; the rest (a second capture, too much, unknown, another
    # account's, a hold the wallet cannot cover) is the careful path's to answer.
    assert statuses == [201, 201, 200, None, None, None, None, None, 201]
    # 12 - 1 (charge) - 3 (new hold) - 2 (existing hold, captured 0.5, 1.5 back)
    assert agent.balance() == D("12") - 1 - 3 - D("0.5")
    assert other.balance() == 10
    captured = api.admin_get(f"/usage-holds/{hold_id}")
    assert decimal_json(captured)["data"]["status"] == "captured"
    for account in (agent, other):
        assert api.ledger_check(account.account_id)["consistent"] is True
    # The keyed answers are stored: the capture's key replays, the second's was not used.
    with psycopg.connect(pg_services.database.driver_url) as connection:
        stored = connection.execute(
            "SELECT key, response_status FROM idempotency_keys WHERE key = ANY(%s)",
            ([op.key for op in ops if op.key],),
        ).fetchall()
    keyed = {op.key: answer for op, answer in zip(ops, answers, strict=True) if op.key}
    assert {key for key, _ in stored} == {k for k, a in keyed.items() if a is not None}


def _wallet(balance: int, *, armed: bool, threshold: int | None) -> usage._WalletState:
    return usage._WalletState(
        account_id="acct",
        currency="USD",
        buckets={"subscription": 0, "promotional": 0, "purchased": balance},
        delta=dict.fromkeys(BUCKETS, 0),
        auto_funding_enabled=True,
        armed=armed,
        threshold=threshold,
    )


def _held(amount: int) -> usage._HoldState:
    at = datetime.now(UTC)
    return usage._HoldState(
        id="hold_1",
        account_id="acct",
        amount_micros=amount,
        split={"subscription": 0, "promotional": 0, "purchased": amount},
        usecase="llm",
        description=None,
        metadata=None,
        status="held",
        expires_at=at + timedelta(minutes=1),
        created_at=at,
        hold_transaction_id="txn_1",
        test_clock_id=None,
    )


@pytest.mark.parametrize(
    ("armed", "threshold", "captured", "armed_after"),
    [
        (False, 5, 1, True),  # ends at 5 + 4 - 1 = 8, over the threshold: re-armed
        (False, 10, 1, False),  # ends at 8, under it: stays disarmed
        (True, 10, 4, True),  # armed stays armed
        (False, None, 4, True),  # no threshold: a credit arms it (as ledger.post does)
    ],
)
def test_a_capture_arms_auto_funding_as_the_careful_path_does(
    armed: bool, threshold: int | None, captured: int, armed_after: bool
) -> None:
    wallets = {"acct": _wallet(5, armed=armed, threshold=threshold)}
    plan = usage._plan(
        [usage.HoldCapture("hold_1", None, captured, datetime.now(UTC))],
        wallets,
        {"hold_1": _held(4)},
    )
    assert plan.answers[0] is not None and plan.answers[0].status_code == 200
    assert wallets["acct"].armed is armed_after
    assert not plan.low_balance  # a capture never asks for a top-up


def test_a_hold_that_crosses_the_auto_funding_threshold_is_left_to_the_careful_path() -> None:
    wallets = {"acct": _wallet(10, armed=True, threshold=5)}
    at = datetime.now(UTC)
    crossing = usage.HoldCreate("acct", 6, "llm", None, None, timedelta(1), at)
    assert usage._plan([crossing], wallets).answers == [None]
    assert wallets["acct"].changed is False and wallets["acct"].armed is True
    staying = usage.HoldCreate("acct", 5_000_000, "llm", None, None, timedelta(1), at)
    answer = usage._plan([staying], {"acct": _wallet(10_000_000, armed=True, threshold=5)})
    assert answer.answers[0] is not None and answer.answers[0].status_code == 201
