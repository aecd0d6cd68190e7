"""Usage holds: reserve funds, then capture part of them as a usage charge or release them;
expiry (by the sweep, by its job on a test clock, or found on the next call) gives the
money back. Both databases."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import requests
from sqlalchemy import func, select

from billfold.application.jobs import Worker
from billfold.client import BillfoldAdmin
from billfold.jobs.models import Job
from billfold.services import Services
from billfold.wallet import holds
from tests.helpers import Agent, Api, assert_error, decimal_json

D = Decimal


def hold(api: Api, agent: Agent, amount: Any, *, key: str | None = None, **extra: Any) -> Any:
    return api.admin_post(
        "/usage-holds",
        {"account_id": agent.account_id, "amount": str(amount), "usecase": "llm", **extra},
        key=key,
    )


def held(api: Api, agent: Agent, amount: Any, **extra: Any) -> dict[str, Any]:
    response = hold(api, agent, amount, **extra)
    assert response.status_code == 201, response.text
    data: dict[str, Any] = decimal_json(response)["data"]
    return data


def capture(api: Api, hold_id: str, amount: Any = None, **extra: Any) -> requests.Response:
    body = {"amount": str(amount)} if amount is not None else {}
    return api.admin_post(f"/usage-holds/{hold_id}/capture", {**body, **extra})


def release(api: Api, hold_id: str, **extra: Any) -> requests.Response:
    return api.admin_post(f"/usage-holds/{hold_id}/release", extra or None)


def wallet(agent: Agent) -> dict[str, Any]:
    response = agent.get("/wallet/balance")
    assert response.status_code == 200, response.text
    data: dict[str, Any] = decimal_json(response)["data"]
    return data


def consistent(api: Api, agent: Agent) -> dict[str, Any]:
    check = api.ledger_check(agent.account_id)
    assert check["consistent"] is True, check
    assert all(value >= 0 for value in check["cached"].values()), check
    return check


def funded(api: Api, purchased: int = 10, promotional: int = 2) -> Agent:
    agent = api.new_agent()
    assert agent.fund(purchased).status_code == 200
    if promotional:
        credit = api.admin_post(
            "/adjustments",
            {"account_id": agent.account_id, "amount": promotional, "reason": "goodwill"},
        )
        assert credit.status_code == 201, credit.text
    return agent


def history(agent: Agent) -> list[tuple[str, str, Decimal]]:
    response = agent.get("/wallet/transactions")
    assert response.status_code == 200, response.text
    items = decimal_json(response)["data"]["items"]
    return [(t["kind"], t["type"], t["amount"]) for t in items]


def test_capture_less_than_held_charges_it_and_gives_the_rest_back(api: Api) -> None:
    agent = funded(api)  # 10 purchased + 2 promotional
    data = held(api, agent, 5, description="a long job", metadata={"job": "j1"})
    assert data["id"] == data["hold_id"] and data["id"].startswith("hold_")
    assert (data["status"], data["amount"], data["captured_amount"]) == ("held", 5, 0)
    assert data["balance_after"] == 7
    assert data["breakdown"] == {"subscription": 0, "promotional": 2, "purchased": 3}
    shown = wallet(agent)
    assert (shown["balance"], shown["available"], shown["held"]) == (7, 7, 5)
    assert shown["breakdown"] == {"subscription": 0, "promotional": 0, "purchased": 7}
    consistent(api, agent)

    # Usage cannot spend the held money.
    assert_error(api.charge_usage(agent.account_id, "7.000001"), 402, "insufficient_funds")

    done = capture(api, data["id"], "3.25")
    assert done.status_code == 200, done.text
    out = decimal_json(done)["data"]
    assert (out["status"], out["captured_amount"], out["balance_after"]) == (
        "captured",
        D("3.25"),
        D("8.75"),
    )
    assert out["charge_transaction_id"] and out["release_transaction_id"]
    shown = wallet(agent)
    assert (shown["balance"], shown["available"], shown["held"]) == (D("8.75"), D("8.75"), 0)
    # The charge spent the hold's promotional credit first; the rest went back to purchased.
    assert shown["breakdown"] == {"subscription": 0, "promotional": 0, "purchased": D("8.75")}
    check = consistent(api, agent)
    assert check["postings"]["revenue:usage"] == D("3.25")
    assert check["postings"].get("holds:usage", 0) == 0
    assert history(agent)[:3] == [
        ("usage_charge", "debit", D("3.25")),
        ("usage_hold_release", "credit", D(5)),
        ("usage_hold", "debit", D(5)),
    ]
    charges = agent.get("/wallet/transactions", params={"type": "debit"}).json()["data"]["items"]
    assert charges[0]["id"] == out["charge_transaction_id"]
    assert (charges[0]["usecase"], charges[0]["metadata"]["job"]) == ("llm", "j1")
    read = api.admin_get(f"/usage-holds/{data['id']}")
    assert read.status_code == 200
    assert decimal_json(read)["data"]["status"] == "captured"


def test_capture_without_amount_takes_the_whole_hold(api: Api) -> None:
    agent = funded(api, promotional=0)
    data = held(api, agent, 4)
    out = decimal_json(capture(api, data["id"]))["data"]
    assert (out["captured_amount"], out["balance_after"]) == (4, 6)
    assert wallet(agent)["held"] == 0
    consistent(api, agent)


def test_capture_more_than_held_is_refused_and_moves_nothing(api: Api) -> None:
    agent = funded(api)
    data = held(api, agent, 5)
    before = (wallet(agent), api.ledger_check(agent.account_id))
    error = assert_error(capture(api, data["id"], "5.000001"), 409, "hold_amount_exceeded")
    assert error["details"]["hold_id"] == data["id"]
    assert (wallet(agent), api.ledger_check(agent.account_id)) == before
    assert capture(api, data["id"], 5).status_code == 200  # still held: exactly all of it
    consistent(api, agent)


def test_double_capture_and_release_after_capture_are_refused(api: Api) -> None:
    agent = funded(api)
    data = held(api, agent, 5)
    assert capture(api, data["id"], 1).status_code == 200
    error = assert_error(capture(api, data["id"], 1), 409, "hold_not_active")
    assert error["details"]["status"] == "captured"
    assert_error(release(api, data["id"]), 409, "hold_not_active")
    assert wallet(agent)["balance"] == 11
    consistent(api, agent)


def test_release_gives_everything_back_to_its_buckets(api: Api) -> None:
    agent = funded(api)
    before = wallet(agent)
    data = held(api, agent, 11)
    out = decimal_json(release(api, data["id"]))["data"]
    assert (out["status"], out["balance_after"], out["captured_amount"]) == ("released", 12, 0)
    after = wallet(agent)
    assert after["breakdown"] == before["breakdown"]
    assert (after["balance"], after["held"]) == (12, 0)
    assert_error(release(api, data["id"]), 409, "hold_not_active")
    assert_error(capture(api, data["id"]), 409, "hold_not_active")
    consistent(api, agent)


def test_capture_after_expiry_is_refused_and_the_money_is_back(api: Api) -> None:
    agent = funded(api)
    data = held(api, agent, 5, ttl_seconds=1)
    assert wallet(agent)["held"] == 5
    time.sleep(1.2)  # its expiry job has not run: the capture finds it expired
    error = assert_error(capture(api, data["id"], 1), 409, "hold_not_active")
    assert error["details"]["status"] == "expired"
    shown = wallet(agent)
    assert (shown["balance"], shown["held"]) == (12, 0)
    read = decimal_json(api.admin_get(f"/usage-holds/{data['id']}"))["data"]
    assert read["status"] == "expired" and read["release_transaction_id"]
    assert_error(release(api, data["id"]), 409, "hold_not_active")
    assert wallet(agent)["balance"] == 12  # given back once
    consistent(api, agent)


def test_a_read_of_an_expired_hold_gives_its_money_back(api: Api) -> None:
    agent = funded(api)
    data = held(api, agent, 5, ttl_seconds=1)
    time.sleep(1.2)
    read = decimal_json(api.admin_get(f"/usage-holds/{data['id']}"))["data"]
    assert read["status"] == "expired"
    assert wallet(agent)["balance"] == 12
    consistent(api, agent)


def test_the_expiry_job_releases_a_hold(api: Api, services: Services) -> None:
    clock = api.new_clock()
    agent = api.new_agent(clock=clock)
    assert agent.fund(10).status_code == 200
    data = held(api, agent, 4, ttl_seconds=600)
    assert wallet(agent)["balance"] == 6
    clock.advance(seconds=599)
    assert wallet(agent)["held"] == 4
    clock.advance(seconds=2)  # runs the hold's expiry job on the clock's time
    shown = wallet(agent)
    assert (shown["balance"], shown["held"]) == (10, 0)
    assert history(agent)[0] == ("usage_hold_release", "credit", D(4))
    read = decimal_json(api.admin_get(f"/usage-holds/{data['id']}"))["data"]
    assert read["status"] == "expired"
    consistent(api, agent)


def _jobs_of(services: Services, account_id: str) -> int:
    with services.database.read() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(Job)
                .where(Job.account_id == account_id, Job.kind.like("wallet.%hold%"))
            )
            or 0
        )


def test_a_hold_on_real_time_queues_no_job_and_the_sweep_expires_it(
    api: Api, services: Services
) -> None:
    Worker(services).drain()  # what earlier tests left expired, and its sweep, gone
    agent = funded(api)
    kept = held(api, agent, 2, ttl_seconds=600)
    data = held(api, agent, 5, ttl_seconds=1)
    assert _jobs_of(services, agent.account_id) == 0  # no job row per hold
    holds.sweep(services)
    assert wallet(agent)["held"] == 7  # not due yet: the sweep leaves both
    time.sleep(1.2)
    with services.database.transaction() as session:
        assert holds.schedule_sweep(session) is True
        assert holds.schedule_sweep(session) is False  # one sweep at a time
    assert Worker(services).drain() >= 1
    shown = wallet(agent)
    assert (shown["balance"], shown["held"]) == (10, 2)
    assert history(agent)[0] == ("usage_hold_release", "credit", D(5))
    read = decimal_json(api.admin_get(f"/usage-holds/{data['id']}"))["data"]
    assert read["status"] == "expired" and read["release_transaction_id"]
    assert decimal_json(api.admin_get(f"/usage-holds/{kept['id']}"))["data"]["status"] == "held"
    consistent(api, agent)


def test_the_sweep_leaves_a_test_clocks_hold_to_its_advance(api: Api, services: Services) -> None:
    clock = api.new_clock()
    agent = api.new_agent(clock=clock)
    assert agent.fund(10).status_code == 200
    data = held(api, agent, 4, ttl_seconds=1)
    time.sleep(1.2)  # past its expiry: its clock's advance runs its job, not the sweep
    holds.sweep(services)
    assert wallet(agent)["held"] == 4
    clock.advance(seconds=2)
    assert decimal_json(api.admin_get(f"/usage-holds/{data['id']}"))["data"]["status"] == (
        "expired"
    )
    assert wallet(agent)["balance"] == 10
    consistent(api, agent)


def test_sweeps_and_reads_racing_give_each_expired_hold_back_once(
    api: Api, services: Services
) -> None:
    agent = funded(api, purchased=20, promotional=0)
    ids = [held(api, agent, 1, ttl_seconds=1)["id"] for _ in range(6)]
    time.sleep(1.2)

    def race(i: int) -> None:
        if i % 3:
            assert api.admin_get(f"/usage-holds/{ids[i % len(ids)]}").status_code == 200
        else:
            holds.sweep(services)

    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(race, range(12)))
    shown = wallet(agent)
    assert (shown["balance"], shown["held"]) == (20, 0)
    releases = [entry for entry in history(agent) if entry[0] == "usage_hold_release"]
    assert releases == [("usage_hold_release", "credit", D(1))] * 6
    consistent(api, agent)


def test_concurrent_capture_and_release_exactly_one_wins(api: Api) -> None:
    agent = funded(api, purchased=20, promotional=0)
    for _ in range(4):
        hold_id = held(api, agent, 3)["id"]

        def race(i: int, hold_id: str = hold_id) -> requests.Response:
            return capture(api, hold_id, 2) if i % 2 else release(api, hold_id)

        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(race, range(4)))
        statuses = sorted(r.status_code for r in results)
        assert statuses == [200, 409, 409, 409], [r.text for r in results]
        for r in results:
            if r.status_code == 409:
                assert r.json()["error"]["code"] == "hold_not_active"
        consistent(api, agent)
    shown = wallet(agent)
    check = api.ledger_check(agent.account_id)
    charged = check["postings"].get("revenue:usage", D(0))
    assert shown["balance"] == 20 - charged and shown["held"] == 0
    assert charged % 2 == 0 and charged <= 8


def test_insufficient_funds_holds_nothing(api: Api) -> None:
    agent = funded(api)
    count = agent.transaction_count()
    error = assert_error(hold(api, agent, "12.000001"), 402, "insufficient_funds")
    assert error["details"]["balance"] == 12
    shown = wallet(agent)
    assert (shown["balance"], shown["held"]) == (12, 0)
    assert agent.transaction_count() == count
    assert hold(api, agent, 12).status_code == 201  # exactly all of it
    assert wallet(agent)["balance"] == 0
    consistent(api, agent)


def test_a_replayed_create_holds_once(api: Api) -> None:
    agent = funded(api)
    key = f"hold-{uuid.uuid4()}"
    first = hold(api, agent, 2, key=key)
    again = hold(api, agent, 2, key=key)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["Idempotency-Replayed"] == "true"
    assert_error(hold(api, agent, 3, key=key), 422, "idempotency_key_reused")
    shown = wallet(agent)
    assert (shown["balance"], shown["held"]) == (10, 2)
    consistent(api, agent)


def test_unknown_and_cross_account_holds_are_not_found(api: Api) -> None:
    agent, other = funded(api), funded(api)
    data = held(api, agent, 1)
    for response in (
        api.admin_get("/usage-holds/hold_nope"),
        capture(api, "hold_nope"),
        release(api, "hold_nope"),
        api.admin_get(f"/usage-holds/{data['id']}", params={"account_id": other.account_id}),
        capture(api, data["id"], account_id=other.account_id),
        release(api, data["id"], account_id=other.account_id),
    ):
        assert_error(response, 404, "hold_not_found")
    assert wallet(agent)["held"] == 1
    assert capture(api, data["id"], account_id=agent.account_id).status_code == 200
    assert_error(hold(api, agent, 1, ttl_seconds=0), 422, "invalid_request")
    assert_error(hold(api, agent, 1, ttl_seconds=86_401), 422, "invalid_request")
    assert_error(capture(api, data["id"], "0"), 422, "invalid_request")
    consistent(api, agent)
    consistent(api, other)


def test_the_admin_sdk_holds_captures_and_releases(api: Api) -> None:
    agent = funded(api)
    with BillfoldAdmin(api.base_url, api.admin_key) as admin:
        first = admin.create_usage_hold(agent.account_id, D("2.5"), "llm", ttl_seconds=60)
        assert (first.status, first.amount, first.balance_after) == ("held", D("2.5"), D("9.5"))
        assert admin.get_usage_hold(first.id).status == "held"
        done = admin.capture_usage_hold(first.id, D(1), account_id=agent.account_id)
        assert (done.status, done.captured_amount, done.balance_after) == ("captured", 1, 11)
        second = admin.create_usage_hold(agent.account_id, 3, "llm")
        assert admin.release_usage_hold(second.id).status == "released"
    assert wallet(agent)["balance"] == 11
    consistent(api, agent)
