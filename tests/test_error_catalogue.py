"""The error catalogue: every code the API answers is in it, raised by name, and published.

Static checks read src/billfold with `ast`: no raise site spells a code as a string, every
exception class's code is catalogued, a family class (NotFound, Conflict, …) only carries
codes of its own status, and the `details` a raise site writes are the catalogue's fields.
The live checks read /openapi.json and a sample of real refusals on both databases.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

import billfold
from billfold.errors import CATALOGUE, BillfoldError, Conflict, ErrorCode, catalogue_json
from billfold.errors import render_markdown as render_errors_markdown
from tests.helpers import CARD_DECLINED, Agent, Api

SRC = Path(billfold.__file__).parent
ROOT = SRC.parent.parent
DOC = ROOT / "docs" / "ERRORS.md"
REGENERATE = "PYTHONPATH=src python -m billfold.errors docs/ERRORS.md"
# The sandbox processor answers in Stripe's error format: its codes are not ours.
STRIPE_SHAPED = (SRC / "processors", SRC / "api" / "routers" / "sandbox.py")


def _sources() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(SRC.rglob("*.py")):
        if any(path.is_relative_to(shaped) for shaped in STRIPE_SHAPED):
            continue
        yield str(path.relative_to(ROOT)), ast.parse(path.read_text(encoding="utf-8"))


def _is_text(node: ast.AST | None) -> bool:
    return isinstance(node, ast.JoinedStr) or (
        isinstance(node, ast.Constant) and isinstance(node.value, str)
    )


def _error_classes() -> dict[str, type[BillfoldError]]:
    for module in pkgutil.walk_packages(billfold.__path__, "billfold."):
        if ".migrations" not in module.name and not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    found: dict[str, type[BillfoldError]] = {}
    pending: list[type[BillfoldError]] = [BillfoldError]
    while pending:
        cls = pending.pop()
        found[cls.__name__] = cls
        pending.extend(cls.__subclasses__())
    return found


def _named_code(node: ast.AST) -> ErrorCode | None:
    """`ErrorCode.X` (or `errors.ErrorCode.X`) → the member; anything else → None."""
    if isinstance(node, ast.Attribute):
        owner = node.value
        owner_name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
        if owner_name == "ErrorCode":
            member: ErrorCode = getattr(ErrorCode, node.attr)
            return member
    return None


def test_no_string_literal_codes_outside_the_catalogue() -> None:
    offenders = []
    for name, tree in _sources():
        for node in ast.walk(tree):
            where = f"{name}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Call):
                for keyword in node.keywords:
                    if keyword.arg == "code" and _is_text(keyword.value):
                        offenders.append(f"{where}: code=<string>")
                func = node.func
                called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
                if called == "error_body" and node.args and _is_text(node.args[0]):
                    offenders.append(f"{where}: error_body(<string>, …)")
            elif isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if isinstance(key, ast.Constant) and key.value == "code" and _is_text(value):
                        offenders.append(f'{where}: {{"code": <string>}}')
            elif isinstance(node, ast.ClassDef):
                for statement in node.body:
                    targets = (
                        statement.targets
                        if isinstance(statement, ast.Assign)
                        else [statement.target]
                        if isinstance(statement, ast.AnnAssign)
                        else []
                    )
                    value = getattr(statement, "value", None)
                    for target in targets:
                        if isinstance(target, ast.Name) and target.id == "code" and _is_text(value):
                            offenders.append(f"{where}: class {node.name}: code = <string>")
    assert not offenders, "name codes from billfold.errors.ErrorCode:\n" + "\n".join(offenders)


def test_every_error_class_code_is_catalogued_with_its_status() -> None:
    classes = _error_classes()
    assert {"NotFound", "Conflict", "CouponError", "CheckoutExpired", "UnsafeWebhookUrl"} <= set(
        classes
    )
    for cls in classes.values():
        assert cls.code in CATALOGUE, cls
        assert CATALOGUE[cls.code].status is not None, cls
        # The status comes from the catalogue only.
        assert "status_code" not in vars(cls) or cls is BillfoldError, cls


def test_raise_sites_agree_with_the_catalogue() -> None:
    """A family class carries only codes of its own status; literal details use the
    catalogue's fields."""
    classes = _error_classes()
    checked: set[ErrorCode] = set()
    problems = []
    for name, tree in _sources():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            cls = classes.get(called)
            if cls is None:
                continue
            where = f"{name}:{node.lineno}: {called}"
            keywords = {keyword.arg: keyword.value for keyword in node.keywords}
            code = cls.code
            if "code" in keywords:
                named = _named_code(keywords["code"])
                if named is None:
                    continue  # passed through from a caller, which names it
                code = named
                # A class that declares its own code is a family of that code's status.
                if "code" in vars(cls) and CATALOGUE[code].status != CATALOGUE[cls.code].status:
                    problems.append(f"{where}: {code} answers {CATALOGUE[code].status}")
            checked.add(code)
            details = keywords.get("details")
            if isinstance(details, ast.Dict):
                keys = {key.value for key in details.keys if isinstance(key, ast.Constant)}
                extra = keys - set(CATALOGUE[code].details)
                if extra:
                    problems.append(f"{where}: {code} details {sorted(extra)} not catalogued")
    assert not problems, "\n".join(problems)
    # The scan saw the raise sites (it would pass vacuously on a renamed class).
    assert {
        ErrorCode.SUBSCRIPTION_EXISTS,
        ErrorCode.COUPON_EXPIRED,
        ErrorCode.PLAN_NOT_FOUND,
        ErrorCode.INSUFFICIENT_FUNDS,
        ErrorCode.RATE_LIMITED,
    } <= checked


def test_an_uncatalogued_code_cannot_be_raised() -> None:
    assert Conflict("x", code=ErrorCode.PLAN_UNCHANGED).status_code == 409
    assert Conflict("x", code="plan_unchanged").code is ErrorCode.PLAN_UNCHANGED  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="typo"):
        Conflict("x", code="plan_unchanged_typo")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no status"):
        BillfoldError("x", code=ErrorCode.HTTP_ERROR)


def test_docs_errors_md_is_generated_from_the_catalogue() -> None:
    expected = render_errors_markdown()
    current = DOC.read_text(encoding="utf-8") if DOC.exists() else ""
    assert current == expected, f"docs/ERRORS.md is out of date; regenerate it: {REGENERATE}"
    for spec in CATALOGUE.values():
        assert f"| `{spec.code}` |" in current
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "docs/ERRORS.md" in readme


def test_openapi_publishes_the_catalogue(api: Api) -> None:
    schema = requests.get(f"{api.base_url}/openapi.json", timeout=10).json()
    published = schema["x-error-catalogue"]
    assert published == catalogue_json()
    assert {entry["code"] for entry in published} == {code.value for code in ErrorCode}
    components = schema["components"]["schemas"]
    code_schema = components["ErrorObject"]["properties"]["code"]
    assert code_schema["$ref"] == "#/components/schemas/ErrorCode"
    assert sorted(components["ErrorCode"]["enum"]) == sorted(code.value for code in ErrorCode)
    # The documented refusals of a route use that envelope.
    fund = schema["paths"]["/api/agents/v1/wallet/fund"]["post"]["responses"]
    assert fund["404"]["content"]["application/json"]["schema"]["$ref"].endswith("ErrorEnvelope")


def _check(response: requests.Response, expected: ErrorCode) -> dict[str, Any]:
    body = response.json()
    error: dict[str, Any] = body["error"]
    assert error["code"] == expected, response.text
    spec = CATALOGUE[ErrorCode(error["code"])]
    assert response.status_code == spec.status, response.text
    assert set(error["details"]) <= set(spec.details), error
    return error


def test_real_refusals_carry_catalogued_codes_and_statuses(api: Api) -> None:
    agent = api.new_agent()
    base = api.base_url
    anonymous = requests.get(api.agent_url("/wallet/balance"), timeout=10)
    _check(anonymous, ErrorCode.UNAUTHENTICATED)
    bad_token = Agent(api, agent.account_id, "", "", "not-a-token")
    _check(bad_token.get("/wallet/balance"), ErrorCode.UNAUTHENTICATED)
    _check(requests.get(f"{base}/no-such-endpoint", timeout=10), ErrorCode.NOT_FOUND)
    _check(
        requests.patch(api.agent_url("/wallet/balance"), headers=agent.headers, timeout=10),
        ErrorCode.METHOD_NOT_ALLOWED,
    )
    _check(agent.post("/wallet/fund", {"amount": "abc"}), ErrorCode.INVALID_REQUEST)
    _check(agent.post("/wallet/fund", data=b"x" * 2_000_000), ErrorCode.PAYLOAD_TOO_LARGE)
    _check(agent.post("/wallet/withdraw", {"amount": 50}), ErrorCode.INSUFFICIENT_FUNDS)
    declined = agent.fund(20, CARD_DECLINED)
    assert _check(declined, ErrorCode.PAYMENT_DECLINED)["details"]["decline_code"]
    assert declined.json()["data"]["error"]["code"] == ErrorCode.PAYMENT_DECLINED
    key = f"k-{uuid.uuid4().hex}"
    assert agent.fund(20, key=key).status_code == 200
    _check(agent.fund(30, key=key), ErrorCode.IDEMPOTENCY_KEY_REUSED)
    _check(agent.get("/subscriptions/sub_nope"), ErrorCode.SUBSCRIPTION_NOT_FOUND)
    _check(agent.get("/payments/pi_nope/status"), ErrorCode.PAYMENT_NOT_FOUND)
    _check(agent.get("/billing/invoices/inv_nope"), ErrorCode.INVOICE_NOT_FOUND)
    _check(
        agent.post("/subscriptions", {"plan_id": 2_000_000_000, "payment_method_id": "pm_x"}),
        ErrorCode.PLAN_NOT_FOUND,
    )
    _check(
        agent.post("/wallet/coupons/redeem", {"coupon_code": "NO-SUCH-COUPON"}),
        ErrorCode.COUPON_NOT_FOUND,
    )
    validated = agent.get("/wallet/coupons/validate", params={"coupon_code": "NO-SUCH-COUPON"})
    assert validated.status_code == 200, validated.text
    as_data = validated.json()["data"]["error"]
    assert as_data["code"] == ErrorCode.COUPON_NOT_FOUND
    assert set(as_data["details"]) <= set(CATALOGUE[ErrorCode.COUPON_NOT_FOUND].details)
    _check(
        api.admin_post("/accounts", {"email": agent.email, "password": "another one"}),
        ErrorCode.ACCOUNT_EXISTS,
    )
    _check(
        api.session.post(
            api.agent_url("/auth/login"),
            json={"email": agent.email, "password": "wrong password"},
            timeout=10,
        ),
        ErrorCode.INVALID_CREDENTIALS,
    )
    _check(
        api.admin_post("/webhook-endpoints", {"url": "ftp://example.com/hook"}),
        ErrorCode.WEBHOOK_URL_NOT_ALLOWED,
    )
