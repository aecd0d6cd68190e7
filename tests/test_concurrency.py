"""Many clients on one wallet at once: the database keeps the money right."""

from __future__ import annotations

import random
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import requests
from sqlalchemy import func, select

from billfold.ledger.models import LedgerPosting, LedgerTransaction
from billfold.services import Services
from tests.helpers import Api, decimal_json


def test_charges_and_fundings_race_on_one_wallet(api: Api, services: Services) -> None:
    agent = api.new_agent()
    assert agent.fund(20).status_code == 200
    rng = random.Random(1234)
    charges = [Decimal(rng.randint(500_000, 2_500_000)) / 1_000_000 for _ in range(200)]
    tasks: list[tuple[str, Decimal]] = [("charge", amount) for amount in charges]
    tasks += [("fund", Decimal(10))] * 20
    rng.shuffle(tasks)
    sessions = [requests.Session() for _ in range(32)]

    def run(indexed: tuple[int, tuple[str, Decimal]]) -> tuple[str, Decimal, requests.Response]:
        index, (kind, amount) = indexed
        http = sessions[index % len(sessions)]
        key = {"Idempotency-Key": str(uuid.uuid4())}
        if kind == "charge":
            response = http.post(
                api.admin_url("/usage-charges"),
                json={"account_id": agent.account_id, "amount": str(amount), "usecase": "race"},
                headers={**api.admin_headers, **key},
            )
        else:
            response = http.post(
                api.agent_url("/wallet/fund"),
                json={"amount": str(amount)},
                headers={**agent.headers, **key},
            )
        return kind, amount, response

    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(run, enumerate(tasks)))

    accepted = Decimal(0)
    rejected = 0
    for kind, amount, response in results:
        if kind == "fund":
            assert response.status_code == 200, response.text
            continue
        if response.status_code == 201:
            accepted += amount
            assert decimal_json(response)["data"]["balance_after"] >= 0
        else:
            assert response.status_code == 402, response.text
            details = decimal_json(response)["error"]["details"]
            # A refusal is only honest if the balance it saw really could not cover it.
            assert details["balance"] < details["amount"] == amount
            rejected += 1
    assert rejected > 0, "the scenario should exhaust the wallet at some point"
    assert accepted > 0

    expected = Decimal(20) + Decimal(200) - accepted
    assert agent.balance() == expected
    check = api.ledger_check(agent.account_id)
    assert check["consistent"] is True
    assert check["cached"]["balance"] == expected

    with services.database.read() as session:
        debits = session.scalar(
            select(func.count())
            .select_from(LedgerTransaction)
            .where(LedgerTransaction.account_id == agent.account_id)
            .where(LedgerTransaction.kind == "usage_charge")
        )
        negative_after = session.scalar(
            select(func.count())
            .select_from(LedgerTransaction)
            .where(LedgerTransaction.account_id == agent.account_id)
            .where(LedgerTransaction.balance_after_micros < 0)
        )
        wallet_postings = session.scalar(
            select(func.sum(LedgerPosting.amount_micros)).where(
                LedgerPosting.account_id == agent.account_id,
                LedgerPosting.ledger_account.like("wallet:%"),
            )
        )
    assert debits == 200 - rejected
    assert negative_after == 0
    assert Decimal(wallet_postings) / 1_000_000 == expected
