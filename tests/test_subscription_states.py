"""The subscription transition table, on its own and as the API lives it.

The table (`billfold.subscriptions.states`): every status is reachable from a start, the
ends have no exits, every live subscription can end, the values are the strings the API
has always answered, and refusals keep the API's codes and messages.

Random lives (hypothesis, through the HTTP API and a test clock of its own): an event the table
refuses answers 409 with its refusal and changes nothing (the row and the view are the
same before and after); every status a subscription reaches, read from the webhook
events each change writes, is the table's move from the status before it.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, get_args

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import event as observe
from hypothesis import strategies as st
from sqlalchemy import select

from billfold.config import Settings
from billfold.errors import Conflict, ErrorCode
from billfold.services import Services
from billfold.subscriptions.dunning import DunningPolicy
from billfold.subscriptions.models import Subscription
from billfold.subscriptions.schemas import CreatePlanRequest
from billfold.subscriptions.states import (
    LIVE_STATUSES,
    REFUSALS,
    START_STATUSES,
    TERMINAL,
    TRANSITIONS,
    BillingReason,
    Event,
    PlanKind,
    SubscriptionStatus,
    can,
    check,
    refusal,
    transition,
)
from billfold.webhooks.models import WebhookEvent
from tests.conftest import LiveServer, Receiver
from tests.helpers import CARD_ATTACH_THEN_FAIL, CARD_OK, Agent, Api, TestClock
from tests.subscription_helpers import (
    advance,
    create_plan,
    listen_to_every_event,
    set_default_card,
    subscriber,
)

S = SubscriptionStatus
ACCOUNT_EVENTS = {
    Event.PAUSE,
    Event.RESUME,
    Event.CANCEL,
    Event.SCHEDULE_CANCEL,
    Event.CHANGE_PLAN,
    Event.RESET_CYCLE,
    Event.FIX_PAYMENT,
}


def successors(status: S) -> set[S]:
    return {to for (source, _), to in TRANSITIONS.items() if source == status}


def reachable(starts: set[S], events: set[Event] | None = None) -> set[S]:
    """Statuses reachable from `starts` by moves of the table (of `events`, if given)."""
    seen, todo = set(starts), list(starts)
    while todo:
        status = todo.pop()
        for (source, event), to in TRANSITIONS.items():
            if source == status and (events is None or event in events) and to not in seen:
                seen.add(to)
                todo.append(to)
    return seen


# --- the table ----------------------------------------------------------------------


def test_values_are_the_strings_stored_and_answered() -> None:
    assert {s.value for s in S} == {
        "incomplete",
        "incomplete_expired",
        "trialing",
        "active",
        "past_due",
        "paused",
        "canceled",
        "unpaid",
    }
    assert [r.value for r in BillingReason] == [
        "subscription_create",
        "subscription_cycle",
        "subscription_update",
        "subscription_reset",
    ]
    assert set(get_args(CreatePlanRequest.model_fields["kind"].annotation)) == set(PlanKind)
    assert set(get_args(Settings.model_fields["dunning_final_status"].annotation)) == {
        S.CANCELED,
        S.UNPAID,
    }


def test_every_status_is_reachable_from_a_start() -> None:
    assert set(START_STATUSES) == {S.INCOMPLETE, S.TRIALING}
    assert reachable(set(START_STATUSES)) == set(S)


def test_the_ends_have_no_exits_and_every_live_subscription_can_end() -> None:
    assert set(TERMINAL) == {S.CANCELED, S.INCOMPLETE_EXPIRED}
    assert set(LIVE_STATUSES) == set(S) - set(TERMINAL)
    for status in TERMINAL:
        assert successors(status) == set(), status
        assert not any(source == status for source, _ in TRANSITIONS), status
    for status in LIVE_STATUSES:
        assert reachable({status}) & set(TERMINAL), status
        assert TRANSITIONS[(status, Event.CANCEL)] == S.CANCELED


def test_every_event_moves_something_and_account_events_have_their_answer() -> None:
    assert {event for _, event in TRANSITIONS} == set(Event)
    assert set(REFUSALS) == ACCOUNT_EVENTS


def test_moves_of_the_model() -> None:
    """The moves the engine makes, as Stripe's statuses read."""
    assert TRANSITIONS[(S.INCOMPLETE, Event.FIRST_PAYMENT_SUCCEEDED)] == S.ACTIVE
    assert TRANSITIONS[(S.INCOMPLETE, Event.EXPIRE)] == S.INCOMPLETE_EXPIRED
    assert TRANSITIONS[(S.ACTIVE, Event.RENEWAL_FAILED)] == S.PAST_DUE
    assert TRANSITIONS[(S.TRIALING, Event.RENEWAL_FAILED)] == S.PAST_DUE
    assert TRANSITIONS[(S.PAST_DUE, Event.RENEWAL_PAID)] == S.ACTIVE
    assert TRANSITIONS[(S.UNPAID, Event.RENEWAL_PAID)] == S.ACTIVE
    assert TRANSITIONS[(S.PAST_DUE, Event.DUNNING_UNPAID)] == S.UNPAID
    assert TRANSITIONS[(S.PAST_DUE, Event.DUNNING_CANCELED)] == S.CANCELED
    assert TRANSITIONS[(S.ACTIVE, Event.PAUSE)] == S.PAUSED
    assert TRANSITIONS[(S.PAUSED, Event.RESUME)] == S.ACTIVE
    # Only an active subscription pauses or resets; a paused one renews nothing.
    assert {s for s in S if (s, Event.PAUSE) in TRANSITIONS} == {S.ACTIVE}
    assert {s for s in S if (s, Event.RESET_CYCLE) in TRANSITIONS} == {S.ACTIVE}
    assert {s for s in S if (s, Event.RENEW) in TRANSITIONS} == {S.ACTIVE, S.TRIALING}
    # Events that leave the status as it is.
    for event in (Event.SCHEDULE_CANCEL, Event.CHANGE_PLAN, Event.RESET_CYCLE, Event.RENEW):
        assert all(to == source for (source, e), to in TRANSITIONS.items() if e == event)
    # The dunning policy picks how dunning ends.
    assert DunningPolicy().final_event == Event.DUNNING_CANCELED
    unpaid = Settings(dunning_final_status="unpaid", dunning_retry_days=[2])
    assert DunningPolicy.from_settings(unpaid) == DunningPolicy((2,), S.UNPAID)
    assert DunningPolicy.from_settings(unpaid).final_event == Event.DUNNING_UNPAID


@dataclass
class Row:
    id: str
    status: str


def test_transition_applies_the_table_and_refuses_the_rest_unchanged() -> None:
    for status in S:
        for event in Event:
            row = Row("sub_x", status.value)
            to = TRANSITIONS.get((status, event))
            assert can(row, event) is (to is not None)
            if to is None:
                with pytest.raises(Conflict) as refused:
                    transition(row, event)
                assert refused.value.status_code == 409
                assert refused.value.details == {"subscription_id": "sub_x", "status": status}
                assert row.status == status  # nothing changed
            else:
                assert check(row, event) == to
                assert transition(row, event) == status
                assert row.status == to


def test_refusals_keep_the_api_answers() -> None:
    def answer(status: S, event: Event) -> tuple[str, str]:
        error = refusal(Row("sub_x", status.value), event)
        return error.code, error.message

    assert answer(S.PAUSED, Event.PAUSE) == (
        ErrorCode.SUBSCRIPTION_ALREADY_PAUSED,
        "Cannot pause a subscription that is paused.",
    )
    assert answer(S.CANCELED, Event.PAUSE) == (
        ErrorCode.SUBSCRIPTION_NOT_ACTIVE,
        "Cannot pause a subscription that is canceled.",
    )
    assert answer(S.ACTIVE, Event.RESUME) == (
        ErrorCode.SUBSCRIPTION_NOT_PAUSED,
        "Cannot resume a subscription that is active.",
    )
    assert answer(S.INCOMPLETE_EXPIRED, Event.CANCEL) == (
        ErrorCode.SUBSCRIPTION_NOT_ACTIVE,
        "Cannot cancel a subscription that is incomplete_expired.",
    )
    assert answer(S.PAST_DUE, Event.SCHEDULE_CANCEL) == (
        ErrorCode.SUBSCRIPTION_NOT_ACTIVE,
        "Cannot schedule the cancellation of a subscription that is past_due.",
    )
    assert answer(S.PAUSED, Event.CHANGE_PLAN) == (
        ErrorCode.SUBSCRIPTION_NOT_ACTIVE,
        "Cannot change the plan of a subscription that is paused.",
    )
    assert answer(S.TRIALING, Event.RESET_CYCLE) == (
        ErrorCode.SUBSCRIPTION_NOT_ACTIVE,
        "Cannot reset the cycle of a subscription that is trialing.",
    )
    assert answer(S.ACTIVE, Event.FIX_PAYMENT) == (
        ErrorCode.NOTHING_TO_FIX,
        "This subscription has no failed payment to fix.",
    )


# --- random lives through the API ---------------------------------------------------

# What a payment's outcome may do right after an account's action paid for something.
OUTCOME_EVENTS = {
    Event.FIRST_PAYMENT_SUCCEEDED,
    Event.RENEWAL_PAID,
    Event.RENEWAL_FAILED,
    Event.DUNNING_UNPAID,
    Event.DUNNING_CANCELED,
}


@pytest.fixture(scope="module")
def api_states(live_server: Any) -> Api:
    from tests.conftest import ADMIN_KEY

    return Api(live_server.url, ADMIN_KEY)


@pytest.fixture(scope="module")
def listening(api_states: Api, live_server: LiveServer, receiver: Receiver) -> Iterator[None]:
    """An endpoint for every event, so each status change writes an event to read."""
    yield from listen_to_every_event(
        api_states, live_server.services, receiver.url + receiver.path()
    )


@dataclass(frozen=True)
class Plans:
    ids: list[int]
    trial_id: int


@pytest.fixture(scope="module")
def plans(api_states: Api) -> Plans:
    ids = [
        create_plan(api_states, name="States small", price=10, included_credits=4)["id"],
        create_plan(api_states, name="States big", price=25, included_credits=15)["id"],
        create_plan(api_states, name="States yearly", price=100, period="year")["id"],
    ]
    trial = create_plan(api_states, name="States trial", price=12, trial_days=3)["id"]
    return Plans([*ids, trial], trial)


OK, FAILING = ("card", True), ("card", False)
advances = st.tuples(st.just("advance"), st.integers(1, 24 * 35))
cards = st.tuples(st.just("card"), st.booleans())
steps = st.one_of(
    st.tuples(st.just("subscribe"), st.integers(0, 3)),
    advances,
    advances,
    advances,
    st.tuples(st.just("pause"), st.integers(0, 3)),
    st.tuples(st.just("resume"), st.integers(0, 3)),
    st.tuples(st.just("change"), st.integers(0, 3), st.integers(0, 3)),
    st.tuples(st.just("reset"), st.integers(0, 3)),
    st.tuples(st.just("cancel"), st.integers(0, 3), st.booleans()),
    st.tuples(st.just("fix"), st.integers(0, 3)),
    cards,
)


def rows(services: Services, account_id: str) -> dict[str, dict[str, Any]]:
    """The account's subscription rows, every column, oldest first."""
    with services.database.read() as session:
        subs = session.scalars(
            select(Subscription)
            .where(Subscription.account_id == account_id)
            .order_by(Subscription.created_at, Subscription.id)
        ).all()
        columns = Subscription.__table__.columns.keys()
        return {sub.id: {c: getattr(sub, c) for c in columns} for sub in subs}


def histories(services: Services, account_id: str) -> dict[str, list[str]]:
    """Each subscription's statuses as its webhook events carried them, oldest first."""
    with services.database.read() as session:
        events = session.scalars(
            select(WebhookEvent)
            .where(WebhookEvent.account_id == account_id)
            .order_by(WebhookEvent.created_at, WebhookEvent.id)
        ).all()
        out: dict[str, list[str]] = defaultdict(list)
        for event in events:
            if event.type.startswith("subscription."):
                data = json.loads(event.payload)["data"]
                out[data["id"]].append(data["status"])
        return out


def account_action(step: tuple[Any, ...]) -> tuple[str, str, dict[str, Any] | None, list[Event]]:
    """(method, path suffix, body, the events the table must allow, checked in order)."""
    name = step[0]
    if name == "change":
        return "PUT", "", {"new_plan_id": step[2]}, [Event.CHANGE_PLAN]
    if name == "cancel":
        if step[2]:
            return "POST", "/cancel", {"at_period_end": True}, [Event.CANCEL, Event.SCHEDULE_CANCEL]
        return "POST", "/cancel", {"at_period_end": False}, [Event.CANCEL]
    path, event = {
        "pause": ("/pause", Event.PAUSE),
        "resume": ("/resume", Event.RESUME),
        "reset": ("/reset-cycle", Event.RESET_CYCLE),
        "fix": ("/fix-payment", Event.FIX_PAYMENT),
    }[name]
    return "POST", path, None, [event]


def act(
    api: Api,
    services: Services,
    agent: Agent,
    plans: Plans,
    step: tuple[Any, ...],
    clock: TestClock,
) -> None:
    """Do one step and check what the table says of it (time passes on the agent's clock)."""
    name = step[0]
    if name == "advance":
        advance(clock, hours=step[1])
        return
    if name == "card":
        set_default_card(api, agent, CARD_OK if step[1] else CARD_ATTACH_THEN_FAIL)
        return
    if name == "subscribe":
        pm = agent.get("/billing/payment-methods").json()["data"]["default_payment_method_id"]
        body = {"plan_id": plans.ids[step[1]], "payment_method_id": pm}
        assert agent.post("/subscriptions", body).status_code < 500
        return
    before = rows(services, agent.account_id)
    if not before:
        return
    sub_id = list(before)[step[1] % len(before)]
    if name == "change":
        step = (*step[:2], plans.ids[step[2]])
    method, suffix, body, events = account_action(step)
    status = S(before[sub_id]["status"])
    view_before = agent.get(f"/subscriptions/{sub_id}").json()["data"]
    send = agent.put if method == "PUT" else agent.post
    response = send(f"/subscriptions/{sub_id}{suffix}", body)
    assert response.status_code < 500, response.text
    refused = next((e for e in events if (status, e) not in TRANSITIONS), None)
    after = rows(services, agent.account_id)
    observe(f"{name} on {status}: {'refused' if refused else 'allowed'}")
    if refused is not None:
        expected = refusal(Row(sub_id, status.value), refused)
        assert response.status_code == 409, (status, events, response.text)
        error = response.json()["error"]
        assert (error["code"], error["message"]) == (expected.code, expected.message)
        assert error["details"] == {"subscription_id": sub_id, "status": status.value}
        assert after[sub_id] == before[sub_id]  # nothing changed
        assert agent.get(f"/subscriptions/{sub_id}").json()["data"] == view_before
        return
    moved = TRANSITIONS[(status, events[-1])]
    assert S(after[sub_id]["status"]) in {status} | reachable({moved}, OUTCOME_EVENTS)


def check_histories(services: Services, account_id: str, starts: dict[str, S]) -> None:
    """Every status each subscription went through is a move of the table from the one
    before it, starting from its start status; the last is its status now."""
    current = rows(services, account_id)
    by_sub = histories(services, account_id)
    for sub_id, row in current.items():
        statuses = [starts[sub_id], *map(S, by_sub.get(sub_id, []))]
        observe(f"went through {' → '.join(dict.fromkeys(statuses))}")
        for before, after in pairwise(statuses):
            assert before == after or after in successors(before), (sub_id, statuses)
        assert statuses[-1] == row["status"], (sub_id, statuses, row["status"])


@pytest.mark.slow
@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(
    st.tuples(cards, st.tuples(st.just("subscribe"), st.integers(0, 3)), cards),
    st.lists(steps, min_size=3, max_size=15),
    st.sampled_from(["canceled", "unpaid"]),
    st.lists(st.integers(1, 4), min_size=0, max_size=2, unique=True).map(sorted),
)
# Lives the random ones reach rarely: paused and resumed, upgraded, ended at the period's
# end; through dunning to unpaid and back, to canceled; a trial that fails; a start that
# is fixed, one that expires and one replaced.
@example(
    (OK, ("subscribe", 0), OK),
    [
        ("pause", 0),
        ("advance", 24 * 5),
        ("resume", 0),
        ("reset", 0),
        ("change", 0, 1),
        ("change", 0, 0),
        ("cancel", 0, True),
        ("advance", 24 * 40),
    ],
    "canceled",
    [1],
)
@example(
    (OK, ("subscribe", 0), FAILING),
    [
        ("advance", 24 * 31),
        ("fix", 0),
        ("pause", 0),
        ("advance", 24 * 3),
        ("resume", 0),
        ("card", True),
        ("fix", 0),
        ("resume", 0),
        ("pause", 0),
        ("cancel", 0, True),
    ],
    "unpaid",
    [1],
)
@example(
    (OK, ("subscribe", 1), FAILING),
    [
        ("advance", 24 * 31),
        ("reset", 0),
        ("change", 0, 0),
        ("cancel", 0, True),
        ("advance", 24 * 2),
        ("fix", 0),
        ("advance", 24 * 3),
        ("cancel", 0, False),
    ],
    "canceled",
    [1, 2],
)
@example(
    (OK, ("subscribe", 3), FAILING),
    [
        ("change", 0, 0),
        ("advance", 24 * 4),
        ("pause", 0),
        ("card", True),
        ("fix", 0),
        ("reset", 0),
        ("pause", 0),
        ("cancel", 0, True),
        ("resume", 0),
        ("advance", 24 * 40),
    ],
    "canceled",
    [],
)
@example(
    (FAILING, ("subscribe", 0), FAILING),
    [
        ("fix", 0),
        ("pause", 0),
        ("card", True),
        ("fix", 0),
        ("cancel", 0, True),
        ("cancel", 0, False),
        ("cancel", 0, False),
        ("resume", 0),
    ],
    "canceled",
    [1],
)
@example(
    (FAILING, ("subscribe", 0), FAILING),
    [
        ("subscribe", 1),
        ("advance", 24),
        ("card", True),
        ("subscribe", 2),
        ("fix", 0),
        ("fix", 1),
        ("change", 2, 1),
        ("cancel", 1, False),
    ],
    "unpaid",
    [2],
)
def test_random_lives_move_only_by_the_table(
    listening: None,
    api_states: Api,
    services: Services,
    plans: Plans,
    first: tuple[tuple[Any, ...], ...],
    script: list[tuple[Any, ...]],
    final: str,
    retry_days: list[int],
) -> None:
    original = services.settings
    services.settings = original.model_copy(
        update={"dunning_final_status": final, "dunning_retry_days": retry_days}
    )
    clock = api_states.new_clock()  # each example's time moves on its own
    agent, _ = subscriber(api_states, clock)
    starts: dict[str, S] = {}
    try:
        for step in [*first, *script]:
            act(api_states, services, agent, plans, step, clock)
            for sub_id, row in rows(services, agent.account_id).items():
                if sub_id not in starts:
                    trial = row["plan_id"] == plans.trial_id
                    starts[sub_id] = S.TRIALING if trial else S.INCOMPLETE
                    assert starts[sub_id] in START_STATUSES
            check_histories(services, agent.account_id, starts)
    finally:
        services.settings = original
