"""Usage charges written together: group commit of concurrent single charges, and
`POST /usage-charges/batch`. Correctness only (the figures live in docs/BENCHMARKS.md):
batch neighbours, a hot wallet under concurrency, replays inside and across batches."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import requests
from sqlalchemy import func, select

from billfold.application import charging
from billfold.application.idempotent import payload_fingerprint
from billfold.application.jobs import Worker
from billfold.application.usecases import usage as usage_use_cases
from billfold.application.usecases.usage import USAGE_CHARGES_PATH
from billfold.clock import now
from billfold.idempotency import service as idempotency
from billfold.jsonenc import envelope, render
from billfold.ledger.models import LedgerTransaction
from billfold.services import Services
from billfold.wallet import usage
from billfold.wallet.auto_funding import JOB_KIND as TOP_UP_JOB
from tests.conservation_helpers import new_account
from tests.helpers import CARD_OK, Api, assert_error, decimal_json, jobs_of


def batch(api: Api, charges: list[Any]) -> requests.Response:
    return api.admin_post("/usage-charges/batch", {"charges": charges})


def item(account_id: str, amount: Any, key: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "account_id": account_id,
        "amount": amount,
        "usecase": "tokens",
        "idempotency_key": key or f"b-{uuid.uuid4()}",
        **extra,
    }


def outcomes(response: requests.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = decimal_json(response)["data"]["items"]
    assert [i["index"] for i in items] == list(range(len(items)))
    return items


def usage_charges(services: Services, account_id: str) -> int:
    with services.database.read() as session:
        return (
            session.scalar(
                select(func.count())
                .select_from(LedgerTransaction)
                .where(
                    LedgerTransaction.account_id == account_id,
                    LedgerTransaction.kind == "usage_charge",
                )
            )
            or 0
        )


def test_one_refusal_leaves_its_neighbours_charged(api: Api, services: Services) -> None:
    rich, poor = api.new_agent(), api.new_agent()
    rich.fund(10)
    poor.fund(10)
    response = batch(
        api,
        [
            item(rich.account_id, "2.5"),
            item(poor.account_id, "10.000001"),  # more than it has
            item(rich.account_id, "0.000001"),
            item("acct_doesnotexist", 1),
            item(rich.account_id, -1),  # invalid amount
            "not an object",
            item(poor.account_id, 10),  # exactly all of it
            item(rich.account_id, 8),  # 10 - 2.5 - 0.000001 < 8
        ],
    )
    got = outcomes(response)
    assert [i["status"] for i in got] == [
        "charged",
        "insufficient_funds",
        "charged",
        "invalid",
        "invalid",
        "invalid",
        "charged",
        "insufficient_funds",
    ]
    assert got[0]["charge"]["balance_after"] == Decimal("7.5")
    assert got[2]["charge"]["balance_after"] == Decimal("7.499999")
    assert got[1]["error"]["code"] == "insufficient_funds"
    assert got[1]["http_status"] == 402
    assert got[3]["error"]["code"] == "account_not_found"
    assert got[4]["error"]["details"]["field"] == "amount"
    assert decimal_json(response)["data"]["charged"] == 3
    assert decimal_json(response)["data"]["refused"] == 5
    assert rich.balance() == Decimal("7.499999")
    assert poor.balance() == 0
    assert usage_charges(services, rich.account_id) == 2
    assert usage_charges(services, poor.account_id) == 1
    for agent in (rich, poor):
        assert api.ledger_check(agent.account_id)["consistent"] is True


def test_descriptions_are_stored_as_sent_empty_and_absent_included(
    api: Api, services: Services
) -> None:
    """An empty description stays empty and an absent one stays absent, in a batch of one
    (which PostgreSQL cannot send as a packed column) and in a larger one."""
    agent = api.new_agent()
    agent.fund(10)
    sent = [[""], ["", None, 'text, with \\ and " and ,']]
    for descriptions in sent:
        items = []
        for description in descriptions:
            extra = {} if description is None else {"description": description}
            items.append(item(agent.account_id, "0.01", **extra))
        assert {i["status"] for i in outcomes(batch(api, items))} == {"charged"}
    with services.database.read() as session:
        stored = session.scalars(
            select(LedgerTransaction.description)
            .where(
                LedgerTransaction.account_id == agent.account_id,
                LedgerTransaction.kind == "usage_charge",
            )
            .order_by(LedgerTransaction.created_at, LedgerTransaction.balance_after_micros.desc())
        ).all()
    assert stored == [d for descriptions in sent for d in descriptions]
    assert api.ledger_check(agent.account_id)["consistent"] is True


def test_stored_keys_are_found_among_any_keys(api: Api, services: Services) -> None:
    """The probe of stored keys finds them, also beside a key it cannot send packed."""
    agent = api.new_agent()
    agent.fund(10)
    key = f"s-{uuid.uuid4()}"
    assert api.charge_usage(agent.account_id, "0.01", key=key).status_code == 201
    for others in ([], [f"missing-{uuid.uuid4()}"], ["odd\x1fkey", ""]):
        with services.database.read() as session:
            found = idempotency.live(session, scope="operator", keys=[*others, key])
        assert list(found) == [key]
        assert found[key].status == "completed" and found[key].response_status == 201


def test_the_batch_answer_renders_as_its_model_would(api: Api, services: Services) -> None:
    """The answer quotes each fresh charge as written: the bytes `render` makes of the
    typed answer, every kind of outcome included."""
    agent = api.new_agent()
    agent.fund(10)
    replayed = f"r-{uuid.uuid4()}"
    assert api.charge_usage(agent.account_id, "0.5", key=replayed).status_code == 201
    twin = item(agent.account_id, "0.25", usecase='« tökens » \\ "quoted"')
    charges = [
        item(agent.account_id, "1.5", description="", metadata={"n": Decimal("0.1")}),
        twin,
        dict(twin),
        {**twin, "amount": "0.26"},  # the same key with another payload
        item(agent.account_id, "0.5", key=replayed),
        item(agent.account_id, "100"),
        item("acct_doesnotexist", 1),
        {"account_id": agent.account_id},
        7,
    ]
    batch = usage_use_cases.charge_usage_batch(services, charges=charges, request_id="req_test")
    assert batch.render() == render(envelope(batch.out()))
    assert [i.status for i in batch.out().items] == [
        "charged",
        "charged",
        "replayed",
        "invalid",
        "replayed",
        "insufficient_funds",
        "invalid",
        "invalid",
        "invalid",
    ]


def test_an_item_whose_key_is_still_in_progress_is_refused(api: Api, services: Services) -> None:
    """A key another request holds (claimed, not completed): the item answers 409, charges
    nothing, and its neighbours are charged."""
    agent = api.new_agent()
    agent.fund(10)
    held = item(agent.account_id, "0.5")
    payload = {k: v for k, v in held.items() if k != "idempotency_key"}
    with services.database.transaction() as session:
        claimed = idempotency.claim(
            session,
            scope="operator",
            key=held["idempotency_key"],
            fingerprint=payload_fingerprint("POST", USAGE_CHARGES_PATH, "", payload),
            policy=services.key_policy,
        )
    assert claimed is None
    got = outcomes(batch(api, [held, item(agent.account_id, "0.1")]))
    assert [i["status"] for i in got] == ["refused", "charged"]
    assert got[0]["http_status"] == 409
    assert got[0]["error"]["code"] == "idempotency_request_in_progress"
    assert agent.balance() == Decimal("9.9")


def test_replays_inside_and_across_batches_and_single_charges(api: Api, services: Services) -> None:
    agent = api.new_agent()
    agent.fund(10)
    single_key, key = f"s-{uuid.uuid4()}", f"b-{uuid.uuid4()}"
    single = api.charge_usage(agent.account_id, 1, key=single_key)
    assert single.status_code == 201
    first = outcomes(
        batch(
            api,
            [
                item(agent.account_id, 2, key),
                item(agent.account_id, 2, key),  # its twin, same payload: one charge
                item(agent.account_id, 1.0, single_key),  # the single charge (1), replayed
                item(agent.account_id, 3, single_key),  # same key, another payload
            ],
        )
    )
    assert [i["status"] for i in first] == ["charged", "replayed", "replayed", "invalid"]
    assert first[1]["charge"] == first[0]["charge"]
    assert first[2]["charge"]["id"] == decimal_json(single)["data"]["id"]
    assert first[3]["error"]["code"] == "idempotency_key_reused"
    again = outcomes(batch(api, [item(agent.account_id, 2, key)]))
    assert again[0]["status"] == "replayed"
    assert again[0]["charge"] == first[0]["charge"]
    # A batch item's key replays as a single charge too.
    replay = api.charge_usage(agent.account_id, 2, key=key)
    assert replay.status_code == 201
    assert replay.headers["Idempotency-Replayed"] == "true"
    assert decimal_json(replay)["data"]["id"] == first[0]["charge"]["id"]
    assert agent.balance() == 7
    assert usage_charges(services, agent.account_id) == 2


def test_a_refusal_is_stored_under_its_key(api: Api) -> None:
    agent = api.new_agent()
    agent.fund(10)
    key = f"b-{uuid.uuid4()}"
    assert outcomes(batch(api, [item(agent.account_id, 15, key)]))[0]["status"] == (
        "insufficient_funds"
    )
    agent.fund(10)
    replayed = outcomes(batch(api, [item(agent.account_id, 15, key)]))[0]
    assert replayed["status"] == "replayed"
    assert replayed["error"]["code"] == "insufficient_funds"
    assert agent.balance() == 20


def test_batch_limits_and_bad_bodies(api: Api) -> None:
    agent = api.new_agent()
    assert_error(batch(api, []), 422, "invalid_request")
    too_many = [item(agent.account_id, "0.000001") for _ in range(1001)]
    assert_error(batch(api, too_many), 422, "invalid_request")
    assert_error(api.admin_post("/usage-charges/batch", {"charges": {}}), 422, "invalid_request")
    no_key = {"account_id": agent.account_id, "amount": 1, "usecase": "tokens"}
    assert outcomes(batch(api, [no_key]))[0]["error"]["details"]["field"] == "idempotency_key"
    unknown = outcomes(batch(api, [item(agent.account_id, 1, extra_field=1)]))[0]
    assert unknown["status"] == "invalid"
    refused = requests.post(
        api.admin_url("/usage-charges/batch"),
        json={"charges": [item(agent.account_id, 1)]},
        timeout=10,
    )
    assert refused.status_code == 401
    assert agent.balance() == 0


def test_a_full_batch_of_one_thousand_on_one_hot_wallet(api: Api, services: Services) -> None:
    agent = api.new_agent()
    agent.fund(10)
    charges = [item(agent.account_id, "0.01") for _ in range(1000)]
    charges[500]["amount"] = "5"  # pushes the later ones over the edge
    got = outcomes(batch(api, charges))
    statuses = [i["status"] for i in got]
    # 999 x 0.01 + 5 is more than 10: charged in order while the balance covers each.
    spent = Decimal(0)
    expected = []
    for charge in charges:
        amount = Decimal(str(charge["amount"]))
        if spent + amount <= 10:
            spent += amount
            expected.append("charged")
        else:
            expected.append("insufficient_funds")
    assert statuses == expected
    assert agent.balance() == 10 - spent
    assert usage_charges(services, agent.account_id) == expected.count("charged")
    assert api.ledger_check(agent.account_id)["consistent"] is True


def test_a_hot_wallet_under_concurrent_single_charges_ends_exact(
    api: Api, services: Services
) -> None:
    agent = api.new_agent()
    agent.fund(10)
    before = charging.charges_committed(services)

    def charge(i: int) -> requests.Response:
        return api.charge_usage(agent.account_id, "0.02", key=f"hot-{agent.account_id}-{i}")

    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(charge, range(600)))  # 12.00 asked of 10.00
    statuses = [r.status_code for r in results]
    assert statuses.count(201) == 500
    assert statuses.count(402) == 100
    assert agent.balance() == 0
    assert usage_charges(services, agent.account_id) == 500
    balances = sorted(decimal_json(r)["data"]["balance_after"] for r in results if r.ok)
    assert balances == [Decimal(i) / 50 for i in range(500)]  # each balance exactly once
    # Retrying every request (lost answers) changes nothing.
    with ThreadPoolExecutor(max_workers=32) as pool:
        retried = list(pool.map(charge, range(600)))
    assert [r.status_code for r in retried] == statuses
    assert all(r.headers.get("Idempotency-Replayed") == "true" for r in retried)
    assert agent.balance() == 0
    assert api.ledger_check(agent.account_id)["consistent"] is True
    # Every one went through this server process's committer (the test server's services:
    # on PostgreSQL the one on the server's event loop, on SQLite its thread).
    assert charging.charges_committed(services) - before >= 1200


def test_write_batch_drops_twins_and_stored_keys(api: Api, services: Services) -> None:
    agent = api.new_agent()
    agent.fund(10)
    key = f"w-{uuid.uuid4()}"

    def charge(amount: int, key: str | None) -> usage.Charge:
        return usage.Charge(
            account_id=agent.account_id,
            amount_micros=amount * 1_000_000,
            usecase="tokens",
            description=None,
            metadata=None,
            created_at=now(),
            key=key,
            scope="operator",
            fingerprint="f",
        )

    answers = charging.write_batch(services, [charge(2, key), charge(2, key), charge(2, None)])
    assert answers[0] is not None and answers[0].status_code == 201
    assert answers[1] is None  # the twin: answered by the careful path
    assert answers[2] is not None and answers[2].status_code == 201
    # Its key now stored: the whole batch is retried without it, the others charged.
    again = charging.write_batch(services, [charge(2, None), charge(2, key)])
    assert again[0] is not None and again[0].status_code == 201
    assert again[1] is None
    assert agent.balance() == 4
    assert api.ledger_check(agent.account_id)["consistent"] is True


def test_items_of_accounts_on_test_clocks_are_charged_on_their_clocks_time(api: Api) -> None:
    """A batch mixing real time and two clocks: each charge is dated on its account's time
    (and a refusal on one clock leaves the others charged)."""
    past, future = (
        api.new_clock(datetime(2031, 1, 15, tzinfo=UTC)),
        api.new_clock(datetime(2040, 6, 1, tzinfo=UTC)),
    )
    on_past = new_account(api, card=CARD_OK, clock=past)
    on_future = new_account(api, card=CARD_OK, clock=future)
    on_real = api.new_agent()
    for agent in (on_past, on_future, on_real):
        agent.fund(10)
    response = batch(
        api,
        [
            item(on_past.account_id, 1),
            item(on_future.account_id, 2),
            item(on_real.account_id, 3),
            item(on_future.account_id, 100),
        ],
    )
    assert response.status_code == 200, response.text
    out = outcomes(response)
    assert [o["status"] for o in out] == ["charged", "charged", "charged", "insufficient_funds"]
    years = [datetime.fromisoformat(o["charge"]["created_at"]).year for o in out[:3]]
    assert years == [2031, 2040, now().year]
    assert (on_past.balance(), on_future.balance(), on_real.balance()) == (9, 8, 7)


def test_a_threshold_crossing_in_a_later_chunk_tops_up_once_and_writes_each_charge_once(
    api: Api, services: Services
) -> None:
    """A batch request is written a chunk at a time: the crossing in its last chunk rolls
    back the chunks already sent and the whole batch goes the way that announces it."""
    agent = api.new_agent()
    agent.fund(10)
    response = agent.put("/wallet/auto-funding", {"auto_charge_amount": 25, "charge_threshold": 5})
    assert response.status_code == 200, response.text
    count = usage.WRITE_CHUNK * 2 + 10
    amount = Decimal("0.01")
    crossing = count - 5  # balance 10 - 0.01 x n drops below 5 at n > 500: the last chunk
    assert 10 - amount * (crossing + 1) < 5 <= 10 - amount * usage.WRITE_CHUNK * 2
    got = outcomes(batch(api, [item(agent.account_id, "0.01") for _ in range(count)]))
    assert [i["status"] for i in got] == ["charged"] * count
    balances = [i["charge"]["balance_after"] for i in got]
    assert balances == [10 - amount * (n + 1) for n in range(count)]
    assert usage_charges(services, agent.account_id) == count
    assert jobs_of(services, agent.account_id, TOP_UP_JOB) == 1
    Worker(services).drain()
    assert agent.balance() == 10 - amount * count + 25
    assert api.ledger_check(agent.account_id)["consistent"] is True
