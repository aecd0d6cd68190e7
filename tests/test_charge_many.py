"""`Processor.charge_many`: the sandbox's answers each request as its `charge` would
(charged, declined, an unknown card, a key charged before) in one transaction; a
processor with no batch call sends them one after another, within a time budget. Both
databases."""

from __future__ import annotations

import threading
import uuid
from dataclasses import asdict
from typing import Any

import pytest
from sqlalchemy import func, select

from billfold.processors import sandbox as sandbox_module
from billfold.processors.base import (
    ChargeNotMade,
    ChargeRequest,
    ChargeResult,
    UnknownPaymentMethod,
    charge_each,
)
from billfold.processors.sandbox import SandboxObject, SandboxProcessor
from billfold.services import Services
from tests.helpers import CARD_ATTACH_THEN_FAIL, CARD_OK, Api


def _request(customer_id: str, payment_method_id: str, cents: int = 500) -> ChargeRequest:
    return ChargeRequest(
        customer_id=customer_id,
        payment_method_id=payment_method_id,
        amount_cents=cents,
        currency="USD",
        idempotency_key=f"test-charge-many-{uuid.uuid4().hex}",
        description="charge_many test",
    )


def _charges_under(services: Services, keys: list[str]) -> int:
    with services.database.read() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(SandboxObject)
                .where(SandboxObject.idempotency_key.in_(keys))
            )
            or 0
        )


def _answer(answer: ChargeResult | Exception) -> Any:
    """An answer without its PaymentIntent id (new in each call)."""
    if isinstance(answer, ChargeResult):
        return ("result", answer.status, answer.decline_code, answer.failure_code)
    return ("raised", type(answer).__name__)


def test_the_sandbox_answers_each_request_of_a_batch_as_its_own_charge_would(
    api: Api, services: Services
) -> None:
    processor = services.processor
    assert isinstance(processor, SandboxProcessor)  # this module runs on the sandbox alone
    customer = processor.create_customer(email="many@example.com", account_id="acct_many")
    other = processor.create_customer(email="other@example.com", account_id="acct_other")
    ok, failing = api.tokenize(CARD_OK), api.tokenize(CARD_ATTACH_THEN_FAIL)
    theirs = api.tokenize(CARD_OK)
    processor.attach_payment_method(theirs, customer_id=other)
    charged_before = _request(customer, ok, 300)
    before = processor.charge_many([charged_before])[0]
    assert isinstance(before, ChargeResult) and before.succeeded

    requests = [
        _request(customer, ok),
        _request(customer, failing),
        _request(customer, "pm_nosuchcard"),
        _request(customer, theirs),  # another customer's card
        charged_before,  # answered as made, not charged again
        _request(customer, ok, 700),
    ]
    together = processor.charge_many(requests)
    alone: list[ChargeResult | Exception] = []
    for request in requests:
        again = _request(request.customer_id, request.payment_method_id, request.amount_cents)
        if request is charged_before:
            again = request
        try:
            alone.append(processor.charge(**asdict(again)))
        except Exception as exc:
            alone.append(exc)
    assert [_answer(a) for a in together] == [_answer(a) for a in alone]
    assert [_answer(a) for a in together][:4] == [
        ("result", "succeeded", None, None),
        ("result", "failed", "generic_decline", "card_declined"),
        ("raised", "UnknownPaymentMethod"),
        ("raised", "UnknownPaymentMethod"),
    ]
    replayed = together[4]
    assert isinstance(replayed, ChargeResult)
    assert replayed.payment_intent_id == before.payment_intent_id
    keys = [request.idempotency_key for request in requests]
    assert _charges_under(services, keys) == 4  # the two charged, the decline, the earlier
    assert processor.charge_many(requests[:1])[0] == together[0]  # a key answers the same


class _Counting:
    """A processor with no batch call whose charges take `seconds` each (on a fake clock)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
        self.sent: list[str] = []
        self.now = 0.0
        self.seconds = seconds
        monkeypatch.setattr("billfold.processors.base.time.monotonic", lambda: self.now)

    def charge(self, **call: Any) -> ChargeResult:
        self.sent.append(call["idempotency_key"])
        self.now += self.seconds
        if call["payment_method_id"] == "pm_unknown":
            raise UnknownPaymentMethod(call["payment_method_id"])
        return ChargeResult(payment_intent_id=f"pi_{len(self.sent)}", status="succeeded")


def test_charging_each_answers_in_order_and_sends_none_after_its_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    processor = _Counting(monkeypatch, seconds=8)
    requests = [_request("cus_1", pm) for pm in ("pm_a", "pm_unknown", "pm_b", "pm_c", "pm_d")]
    answers = charge_each(processor, requests, budget=20)  # type: ignore[arg-type]
    assert [_answer(a) for a in answers] == [
        ("result", "succeeded", None, None),
        ("raised", "UnknownPaymentMethod"),
        ("result", "succeeded", None, None),  # begun at 16 s, within the budget
        ("raised", "ChargeNotMade"),
        ("raised", "ChargeNotMade"),
    ]
    assert processor.sent == [request.idempotency_key for request in requests[:3]]
    assert isinstance(answers[3], ChargeNotMade)


def test_a_batch_with_a_key_a_concurrent_charge_is_making_answers_that_charge(
    api: Api, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A charge under key K has written its row, not yet committed, when a batch with K
    and another key starts: the batch waits for K's card, then answers K's charge as made
    (as `charge` would) and charges the other key; nothing is charged twice."""
    processor = services.processor
    assert isinstance(processor, SandboxProcessor)
    customer = processor.create_customer(email="racing@example.com", account_id="acct_racing")
    racing, other = (
        _request(customer, api.tokenize(CARD_OK)),
        _request(customer, api.tokenize(CARD_OK)),
    )
    written, go_on = threading.Event(), threading.Event()
    real_insert = sandbox_module.insert_or_ignore
    batch_thread = threading.current_thread()

    def insert_then_wait(*args: Any, **kwargs: Any) -> Any:
        inserted = real_insert(*args, **kwargs)
        if threading.current_thread() is not batch_thread:
            written.set()
            go_on.wait(5)
        return inserted

    monkeypatch.setattr(sandbox_module, "insert_or_ignore", insert_then_wait)
    single: list[ChargeResult] = []
    charging = threading.Thread(target=lambda: single.append(processor.charge(**asdict(racing))))
    charging.start()
    assert written.wait(5)
    threading.Timer(1.0, go_on.set).start()  # the batch starts while K is uncommitted
    answers = processor.charge_many([racing, other])
    charging.join()
    made, charged = answers
    assert isinstance(made, ChargeResult) and isinstance(charged, ChargeResult)
    assert made.payment_intent_id == single[0].payment_intent_id
    assert charged.succeeded
    assert _charges_under(services, [racing.idempotency_key, other.idempotency_key]) == 2
