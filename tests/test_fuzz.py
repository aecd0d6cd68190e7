"""Fuzz the HTTP API against its own OpenAPI document with schemathesis, on both databases.

Every operation in the live server's /openapi.json gets three bounded, derandomized
Hypothesis runs built from schemathesis' strategies:

- positive: data valid per the schema;
- negative: data the schema forbids (wrong types, missing fields, out-of-range values, a
            missing token), skipped for operations without any input to make invalid;
- seeded:   valid data with the ids in it (account, card, payment, login email and password)
            replaced by real ones of this run, so requests get past "not found": real card
            charges and refunds, usage charges, adjustments, card removal, login.

Agent operations carry the bearer token of an agent with a funded wallet and a saved
default card, operator operations the admin key, the sandbox tokenization API the
publishable key. What the requests use up (cards, credit, payments) is restored before
every run.

Checks on every response:
- no 5xx (`not_a_server_error`);
- every 4xx body is exactly the envelope {"error": {"code", "message", "details",
  "request_id"}}, 402 bodies may add "data" (`error_envelope`); the sandbox endpoints speak
  Stripe's error format, so they are held to the other checks only;
- a response with a documented status matches its documented schema
  (`response_schema_conformance`);
- data the schema forbids is rejected with a 4xx (`negative_data_rejection`).

The runs of all operations complete before the test fails, and the failure lists every
failing operation with a curl command that reproduces it (with the test run's token or
admin key) and, for a 500, Billfold's frames of the server's traceback.
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.core.result import Ok
from sqlalchemy import delete, update

from billfold.jobs.models import Job, Lane
from billfold.ratelimit import RateLimitCounter
from billfold.subscriptions.models import Plan
from billfold.webhooks.models import WebhookDelivery, WebhookEndpoint
from tests.conftest import ADMIN_KEY, LiveServer
from tests.helpers import CARD_DECLINED, CARD_OK, Agent, Api

pytestmark = pytest.mark.slow

AGENT_PREFIX = "/api/agents/v1"
ADMIN_PREFIX = "/api/admin/v1"
SANDBOX_PREFIX = "/sandbox/v1"
SANDBOX_KEY = "pk_test_billfold_sandbox"
ERROR_KEYS = {"code", "message", "details", "request_id"}

MAX_EXAMPLES = 30  # per operation, for the positive and the negative run each
SEEDED_EXAMPLES = 40  # the seeded run reaches the deepest code, so it gets more
REQUEST_TIMEOUT = 30

FUZZ_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,  # the same examples on every run: no flaky failures
    deadline=None,
    database=None,
    print_blob=False,
    suppress_health_check=list(HealthCheck),
)


# Reports show requests as sent (test credentials included), so each curl reproduces its bug.
SCHEMATHESIS_CONFIG = schemathesis.Config.from_dict(
    {"output": {"sanitization": {"enabled": False}}}
)


def error_envelope(ctx: schemathesis.CheckContext, response: Any, case: schemathesis.Case) -> None:
    """A 4xx body is exactly {"error": {code, message, details, request_id}} (402: + data)."""
    status = response.status_code
    if not 400 <= status < 500 or case.operation.path.startswith(SANDBOX_PREFIX):
        return
    try:
        body = response.json()
    except ValueError:
        raise AssertionError(f"{status} body is not JSON: {response.text[:300]!r}") from None
    allowed = {"error", "data"} if status == 402 else {"error"}
    if not isinstance(body, dict) or "error" not in body or not set(body) <= allowed:
        raise AssertionError(f"{status} body is not the error envelope: {body!r}"[:500])
    error = body["error"]
    if not isinstance(error, dict) or set(error) != ERROR_KEYS:
        raise AssertionError(f"{status} error object has the wrong keys: {error!r}"[:500])
    problems = [
        name
        for name, ok in (
            ("code", isinstance(error["code"], str) and bool(error["code"])),
            ("message", isinstance(error["message"], str) and bool(error["message"])),
            ("details", isinstance(error["details"], dict)),
            ("request_id", isinstance(error["request_id"], str)),
        )
        if not ok
    ]
    if not problems and not error["request_id"].startswith("req_"):
        problems.append("request_id")
    if problems:
        raise AssertionError(f"{status} error object has bad {', '.join(problems)}: {error!r}")


CHECKS = [
    schemathesis.checks.not_a_server_error,
    error_envelope,
    schemathesis.checks.response_schema_conformance,
    schemathesis.checks.negative_data_rejection,
]


@dataclass
class World:
    """Real objects the seeded runs put into requests, restored before every run."""

    api: Api
    agent: Agent  # every agent operation is sent with this agent's token
    target: Agent  # the account operator operations act on (suspend, charge, refund)
    card_id: str = ""  # the agent's saved default card
    plan_id: int = 0  # a cheap monthly plan the agent is subscribed to
    subscription_id: str = ""  # the agent's subscription to it (restarted when ended)
    agent_payment_id: str = ""  # a payment of the agent (GET /payments/{id}/status)
    target_payment_id: str = ""  # a refundable payment of the target (POST /refunds)

    def prepare(self) -> None:
        """Give the agent a default card and credit, and the target a fresh payment."""
        listed = self.agent.get("/billing/payment-methods")
        assert listed.status_code == 200, listed.text
        default = listed.json()["data"]["default_payment_method_id"]
        if default is None:
            added = self.agent.post(
                "/billing/payment-methods", {"payment_method_id": self.agent.card()}
            )
            assert added.status_code == 201, added.text
            default = added.json()["data"]["id"]
        self.card_id = default
        if not self.agent_payment_id or self.agent.balance() < Decimal(1000):
            funded = self.agent.post("/wallet/fund", {"amount": 5000})
            assert funded.status_code == 200, funded.text
            self.agent_payment_id = funded.json()["data"]["payment_intent_id"]
        if not self.plan_id:
            created = self.api.admin_post(
                "/plans", {"name": "Fuzz plan", "price": 1, "period": "month"}
            )
            assert created.status_code == 201, created.text
            self.plan_id = created.json()["data"]["id"]
        subs = self.agent.get("/subscriptions").json()["data"]["items"]
        live = [s for s in subs if s["plan_id"] == self.plan_id and s["status"] == "active"]
        if live:
            self.subscription_id = live[0]["id"]
        else:
            started = self.agent.post(
                "/subscriptions", {"plan_id": self.plan_id, "payment_method_id": self.card_id}
            )
            if started.status_code == 201:
                self.subscription_id = started.json()["data"]["id"]
        reactivated = self.api.admin_post(f"/accounts/{self.target.account_id}/reactivate")
        assert reactivated.status_code == 200, reactivated.text
        funded = self.target.fund(50)
        assert funded.status_code == 200, funded.text
        self.target_payment_id = funded.json()["data"]["payment_intent_id"]

    def known(self) -> dict[str, list[str]]:
        """Real values by parameter or body field name; the first is the one to use most."""
        return {
            "account_id": [self.target.account_id, self.agent.account_id],
            "payment_method_id": [
                self.card_id,
                self.api.tokenize(CARD_OK),
                self.api.tokenize(CARD_DECLINED),
            ],
            "payment_intent_id": [self.agent_payment_id, self.target_payment_id],
            "subscription_id": [self.subscription_id] if self.subscription_id else [],
            "email": [self.agent.email],
            "password": [self.agent.password],
        }

    def throwaway_token(self) -> str:
        """A fresh token of the agent, for the operation that revokes the token it is sent with."""
        issued = self.api.admin_post(f"/accounts/{self.agent.account_id}/tokens")
        assert issued.status_code == 201, issued.text
        token: str = issued.json()["data"]["access_token"]
        return token


def seed(case: schemathesis.Case, known: dict[str, list[str]], pick: int) -> None:
    """Put real ids into a generated case: its path parameters and top-level body fields."""
    for name in list(case.path_parameters or {}):
        if known.get(name):
            # Mostly the object the operation is for (an operator acts on the target, an
            # agent on its own card or payment), now and then another real one.
            values = known[name]
            case.path_parameters[name] = values[pick % len(values)] if pick % 4 == 0 else values[0]
    if isinstance(case.body, dict):
        for name in list(case.body):
            if known.get(name):
                values = known[name]
                case.body[name] = values[pick % len(values)]


class ServerErrors(logging.Handler):
    """The tracebacks the server logs for unhandled errors, by request id."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.tracebacks: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        ids = [a for a in record.args or () if isinstance(a, str) and a.startswith("req_")]
        if ids and record.exc_info and record.exc_info[0] is not None:
            self.tracebacks[ids[0]] = compact_traceback(record.exc_info)


def compact_traceback(exc_info: Any) -> str:
    """The exception lines and Billfold's own frames of a traceback."""
    lines = "".join(traceback.format_exception(*exc_info)).splitlines()
    kept = []
    for number, line in enumerate(lines):
        if line.startswith("  File "):
            if "/billfold/" in line and "site-packages" not in line:
                kept += [line, lines[number + 1]]
        elif line and not line.startswith(" "):
            kept.append(line)
    return "\n".join(kept)


def leaves(exc: BaseException) -> Iterator[BaseException]:
    """The reports in what Hypothesis raised: one schemathesis failure group per bug."""
    if isinstance(exc, BaseExceptionGroup) and not str(exc).startswith("Schemathesis"):
        for inner in exc.exceptions:
            yield from leaves(inner)
    else:
        yield exc


@dataclass
class Fuzzer:
    live_server: LiveServer
    world: World
    errors: ServerErrors
    session: requests.Session = field(default_factory=requests.Session)
    failures: list[str] = field(default_factory=list)
    requests_sent: int = 0

    def headers_for(self, case: schemathesis.Case) -> dict[str, str]:
        path = case.operation.path
        if case.operation.schema.is_security_param_negated(case):
            return {}  # a negative case that leaves the token out on purpose
        if path.startswith(AGENT_PREFIX):
            token = self.world.agent.token
            if case.method.upper() == "DELETE" and path.endswith("/auth/tokens/current"):
                token = self.world.throwaway_token()
            return {"Authorization": f"Bearer {token}"}
        if path.startswith(ADMIN_PREFIX):
            return {"Authorization": f"Bearer {ADMIN_KEY}"}
        return {}

    def send(self, case: schemathesis.Case) -> None:
        headers = self.headers_for(case)
        kwargs: dict[str, Any] = {}
        if case.operation.path.startswith(SANDBOX_PREFIX):
            kwargs["auth"] = (SANDBOX_KEY, "")
        response = case.call(
            base_url=self.live_server.url,
            session=self.session,
            headers=headers,
            timeout=REQUEST_TIMEOUT,
            **kwargs,
        )
        self.requests_sent += 1
        case.validate_response(response, checks=CHECKS, headers=headers)

    def run(self, operation: Any, mode: str) -> None:
        known = self.world.known() if mode == "seeded" else {}
        generation = (
            schemathesis.GenerationMode.NEGATIVE
            if mode == "negative"
            else schemathesis.GenerationMode.POSITIVE
        )
        strategy = operation.as_strategy(generation_mode=generation)
        examples = SEEDED_EXAMPLES if mode == "seeded" else MAX_EXAMPLES

        @settings(FUZZ_SETTINGS, max_examples=examples)
        @given(case=strategy, pick=st.integers(min_value=0, max_value=1 << 16))
        def fuzz(case: schemathesis.Case, pick: int) -> None:
            if known:
                seed(case, known, pick)
            self.send(case)

        self.errors.tracebacks.clear()
        try:
            fuzz()
        except Unsatisfiable as exc:
            # In a negative run: nothing in the input can be invalid (free-form strings only).
            if mode != "negative":
                self.failures.append(self.describe(operation, mode, exc))
        except (Exception, BaseExceptionGroup) as exc:  # schemathesis' FailureGroup is the latter
            if isinstance(exc, BaseExceptionGroup) and exc.subgroup(
                (KeyboardInterrupt, SystemExit)
            ):
                raise
            self.failures.append(self.describe(operation, mode, exc))

    def describe(self, operation: Any, mode: str, exc: BaseException) -> str:
        text = "\n".join(str(e) for e in leaves(exc)).strip() or repr(exc)
        report = [f"### {operation.label} ({mode} data)", text]
        for request_id in dict.fromkeys(re.findall(r"req_[A-Za-z0-9]+", text)):
            if request_id in self.errors.tracebacks:
                report += [f"Server traceback of {request_id}:", self.errors.tracebacks[request_id]]
        return "\n".join(report)


def load_operations(live_server: LiveServer) -> list[Any]:
    schema = schemathesis.openapi.from_url(
        f"{live_server.url}/openapi.json", config=SCHEMATHESIS_CONFIG, timeout=10
    )
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"schemathesis cannot read an operation: {result.err()}"
        # Test clocks are fuzzed too: an advance moves only the clock it names (and the
        # accounts on it), never another test's time.
        operations.append(result.ok())
    return operations


def has_input(operation: Any) -> bool:
    return bool(list(operation.iter_parameters()) or operation.body)


def test_api_survives_fuzzing_against_its_openapi(live_server: LiveServer, api: Api) -> None:
    errors = ServerErrors()
    server_log = logging.getLogger("billfold")
    server_log.addHandler(errors)
    world = World(api=api, agent=api.new_agent(), target=api.new_agent())
    fuzzer = Fuzzer(live_server, world, errors)
    try:
        operations = load_operations(live_server)
        assert len(operations) > 20, [operation.label for operation in operations]
        for operation in operations:
            for mode in ("positive", "negative", "seeded"):
                if mode == "negative" and not has_input(operation):
                    continue
                world.prepare()
                fuzzer.run(operation, mode)
    finally:
        server_log.removeHandler(errors)
        # Fuzzed logins count as failures of 127.0.0.1; later tests must still be able to
        # log in through the same server.
        with live_server.services.database.transaction() as session:
            session.execute(delete(RateLimitCounter))
            # Fuzzed plans take no new subscribers in later tests.
            session.execute(update(Plan).values(status="archived"))
            # Fuzzed webhook endpoints point anywhere: later tests' workers must not
            # spend their time trying to deliver to them.
            session.execute(
                update(WebhookEndpoint)
                .where(WebhookEndpoint.enabled.is_(True))
                .values(enabled=False, disabled_reason="created by the fuzzer")
            )
            session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.status == "pending")
                .values(status="failed", last_error="endpoint created by the fuzzer")
            )
            # …nor work through their queued attempts (thousands, due at once) before
            # reaching their own jobs, whatever test runs next.
            session.execute(
                update(Job)
                .where(Job.lane == Lane.WEBHOOKS, Job.status == "queued")
                .values(status="succeeded", last_error="endpoint created by the fuzzer")
            )
    assert fuzzer.requests_sent > 1000
    if fuzzer.failures:
        pytest.fail(
            f"{len(fuzzer.failures)} fuzzing runs failed ({fuzzer.requests_sent} requests):\n\n"
            + "\n\n".join(fuzzer.failures),
            pytrace=False,
        )
