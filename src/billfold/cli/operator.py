"""The operator's verbs: usage charges, accounts, plans, coupons and test clocks, through the
SDK's `BillfoldAdmin`. The admin key comes from --admin-key, BILLFOLD_ADMIN_KEY or the
stored config (`billfold login --admin-key`)."""

from __future__ import annotations

import json
import secrets
import sys
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast

import typer

from billfold.cli.agent import PLAN_COLUMNS, Amount, amount_arg, coupons_app, plans_app
from billfold.cli.config import ConfigError, resolve
from billfold.cli.output import (
    EXIT_INSUFFICIENT_FUNDS,
    EXIT_USAGE,
    JsonFlag,
    console,
    emit,
    fail,
    handled,
    money,
    ok,
    show_rows,
    to_data,
)
from billfold.errors import ErrorCode

if TYPE_CHECKING:
    from billfold.client.admin import BillfoldAdmin

usage_app = typer.Typer(help="Operator: debit wallets for usage.")
accounts_app = typer.Typer(help="Operator: accounts and their agent tokens.")
test_clock_app = typer.Typer(help="Operator (sandbox): test clocks that move accounts' time.")
operator_keys_app = typer.Typer(help="Operator: named API keys with scopes.")

AdminKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--admin-key", help="Operator key (default: BILLFOLD_ADMIN_KEY or the stored one)"
    ),
]
UrlOpt = Annotated[str | None, typer.Option("--url", help="Billfold's base URL")]


def register(app: typer.Typer) -> None:
    app.add_typer(usage_app, name="usage")
    app.add_typer(accounts_app, name="accounts")
    app.add_typer(test_clock_app, name="test-clock")
    app.add_typer(operator_keys_app, name="operator-keys")


def admin_client(admin_key: str | None = None, url: str | None = None) -> BillfoldAdmin:
    from billfold.client.admin import BillfoldAdmin

    target = resolve(url=url, admin_key=admin_key)
    if not target.admin_key:
        raise ConfigError("no admin key: pass --admin-key or set BILLFOLD_ADMIN_KEY")
    return BillfoldAdmin(target.url, target.admin_key)


# --- usage ---------------------------------------------------------------------------


@usage_app.command("charge")
@handled
def usage_charge(
    account: Annotated[str, typer.Argument(metavar="ACCOUNT", help="acct_…")],
    amount: Amount,
    usecase: Annotated[str, typer.Argument(metavar="USECASE", help="e.g. tokens, images")],
    key: Annotated[
        str | None, typer.Option("--key", help="Idempotency key: a retry never debits twice")
    ] = None,
    admin_key: AdminKeyOpt = None,
    url: UrlOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Debit ACCOUNT's wallet AMOUNT for USECASE."""
    result = admin_client(admin_key, url).create_usage_charge(
        account, amount, usecase, idempotency_key=key
    )

    def render(data: Any) -> None:
        ok(
            f"Charged {money(data.get('amount'))} for {data.get('usecase')}: balance "
            f"{money(data.get('balance_after'))} ({data.get('id')})"
        )

    emit(result, as_json, render)


BATCH_COLUMNS = [
    ("#", "index"),
    ("Idempotency key", "idempotency_key"),
    ("Status", "status"),
    ("Amount", "charge.amount"),
    ("Balance after", "charge.balance_after"),
    ("Error", "error.code"),
]


@usage_app.command("batch")
@handled
def usage_batch(
    path: Annotated[
        Path,
        typer.Argument(
            metavar="FILE",
            help="A JSON array of charges, or one charge per line (JSON Lines); - for stdin",
            allow_dash=True,
        ),
    ],
    admin_key: AdminKeyOpt = None,
    url: UrlOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Send up to 1,000 charges in one request, each an object with account_id, amount,
    usecase (description and metadata optional) and its own idempotency_key: sending the
    same file again charges nothing twice. Exits 0 when every item holds a charge (made
    now or by an earlier send of its key), 4 when any does not (the table says which and
    why)."""
    text = sys.stdin.read() if str(path) == "-" else path.read_text()
    charges = _charges_of(text)
    result = admin_client(admin_key, url).create_usage_charges_batch(charges)

    def render(data: Any) -> None:
        show_rows(data["items"], BATCH_COLUMNS, title="Usage charges")
        ok(f"{data['charged']} charged, {data['replayed']} replayed, {data['refused']} refused")

    emit(result, as_json, render)
    if any(item.charge is None for item in result.items):
        raise typer.Exit(EXIT_INSUFFICIENT_FUNDS)


def _charges_of(text: str) -> list[dict[str, Any]]:
    """The charges of a batch file: a JSON array, or JSON Lines (blank lines skipped)."""
    stripped = text.strip()
    try:
        charges = (
            json.loads(stripped, parse_float=Decimal)
            if stripped.startswith("[")
            else [
                json.loads(line, parse_float=Decimal)
                for line in stripped.splitlines()
                if line.strip()
            ]
        )
    except json.JSONDecodeError as exc:
        fail(f"not JSON or JSON Lines: {exc}", code=ErrorCode.INVALID_REQUEST, exit_code=EXIT_USAGE)
    if not isinstance(charges, list) or not all(isinstance(c, dict) for c in charges):
        fail(
            "expected one JSON object per charge",
            code=ErrorCode.INVALID_REQUEST,
            exit_code=EXIT_USAGE,
        )
    return charges


# --- accounts ------------------------------------------------------------------------

ACCOUNT_COLUMNS = [
    ("Id", "id"),
    ("Email", "email"),
    ("Status", "status"),
    ("Currency", "currency"),
    ("Test clock", "test_clock_id"),
    ("Created", "created_at"),
]


@accounts_app.command("list")
@handled
def accounts_list(
    email: Annotated[str | None, typer.Option(help="Only emails containing this")] = None,
    status: Annotated[str | None, typer.Option(help="active or suspended")] = None,
    limit: Annotated[int, typer.Option(min=1, max=200)] = 50,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    admin_key: AdminKeyOpt = None,
    url: UrlOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """The accounts, newest first."""

    def render(data: Any) -> None:
        show_rows(data["items"], ACCOUNT_COLUMNS, title="Accounts", empty="No accounts.")
        if data["has_more"]:
            console.print(f"[dim]{data['total']} in all; --offset to page[/dim]")

    admin = admin_client(admin_key, url)
    page = admin.list_accounts(
        email=email,
        status=cast(Literal["active", "suspended"] | None, status),
        limit=limit,
        offset=offset,
    )
    emit(page, as_json, render)


@accounts_app.command("create")
@handled
def accounts_create(
    email: str,
    password: Annotated[
        str | None, typer.Option(help="Its login password (default: a random one, printed)")
    ] = None,
    test_clock: Annotated[
        str | None, typer.Option("--test-clock", help="Sandbox: live on this test clock")
    ] = None,
    currency: Annotated[str, typer.Option(help="USD, EUR or GBP")] = "USD",
    token: Annotated[
        bool, typer.Option("--token/--no-token", help="Also issue an agent token")
    ] = False,
    admin_key: AdminKeyOpt = None,
    url: UrlOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Create an account (with its empty wallet)."""
    admin = admin_client(admin_key, url)
    generated = password is None
    password = password or secrets.token_urlsafe(12)
    kwargs: dict[str, Any] = {"currency": currency}
    if test_clock:
        kwargs["test_clock_id"] = test_clock
    account = to_data(admin.create_account(email, password, **kwargs))
    if generated:
        account["password"] = password
    if token:
        account["token"] = to_data(admin.issue_token(account["id"]))
    if as_json:
        emit(account, True)
        return
    ok(f"Created {account['id']} ({email})")
    if generated:
        console.print(f"Password: {password}", highlight=False)
    if token:
        console.print(f"Agent token: {account['token'].get('access_token')}", highlight=False)


@accounts_app.command("token")
@handled
def accounts_token(
    account: Annotated[str, typer.Argument(metavar="ACCOUNT", help="acct_…")],
    expires_in: Annotated[str, typer.Option(help="1_week, 1_month, 3_months or never")] = "1_month",
    admin_key: AdminKeyOpt = None,
    url: UrlOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Mint an agent token for ACCOUNT (shown once)."""
    result = admin_client(admin_key, url).issue_token(account, expires_in=expires_in)  # type: ignore[arg-type]
    emit(result, as_json, lambda data: print(data.get("access_token")))


# --- plans and coupons (groups shared with the agent's verbs) -------------------------


@plans_app.command("create")
@handled
def plans_create(
    name: str,
    price: Amount,
    period: Annotated[str, typer.Argument(metavar="PERIOD", help="month or year")],
    feature: Annotated[
        list[str] | None, typer.Option("--feature", help="A feature line (repeatable)")
    ] = None,
    kind: Annotated[str, typer.Option(help="normal, addon or enterprise")] = "normal",
    credits: Annotated[
        Decimal | None,
        typer.Option("--credits", parser=amount_arg, help="Included credits per period"),
    ] = None,
    trial_days: Annotated[int | None, typer.Option(min=1, max=365)] = None,
    admin_key: AdminKeyOpt = None,
    url: UrlOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a plan NAME at PRICE per PERIOD."""
    fields: dict[str, Any] = {"kind": kind}
    if credits is not None:
        fields["included_credits"] = credits
    if trial_days is not None:
        fields["trial_days"] = trial_days
    result = admin_client(admin_key, url).create_plan(name, price, period, feature or [], **fields)  # type: ignore[arg-type]

    def render(data: Any) -> None:
        ok(f"Created plan #{data.get('id')}")
        show_rows([data], PLAN_COLUMNS)

    emit(result, as_json, render)


@coupons_app.command("create")
@handled
def coupons_create(
    code: str,
    kind: Annotated[str, typer.Option(help="credit, bonus_percent or bonus_fixed")] = "credit",
    amount: Annotated[
        Decimal | None,
        typer.Option(parser=amount_arg, help="Credit (credit) or bonus (bonus_fixed)"),
    ] = None,
    percent: Annotated[
        Decimal | None, typer.Option(parser=amount_arg, help="Bonus percent (bonus_percent)")
    ] = None,
    min_purchase: Annotated[
        Decimal | None, typer.Option("--min-purchase", parser=amount_arg)
    ] = None,
    max_redemptions: Annotated[int | None, typer.Option("--max-redemptions", min=1)] = None,
    valid_from: Annotated[
        datetime | None, typer.Option("--valid-from", help="ISO time with a timezone")
    ] = None,
    valid_until: Annotated[datetime | None, typer.Option("--valid-until")] = None,
    currency: str = "USD",
    admin_key: AdminKeyOpt = None,
    url: UrlOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Create coupon CODE."""
    fields: dict[str, Any] = {
        "amount": amount,
        "percent": percent,
        "min_purchase": min_purchase,
        "max_redemptions": max_redemptions,
        "valid_from": valid_from,
        "valid_until": valid_until,
        "currency": currency,
    }
    fields = {k: v for k, v in fields.items() if v is not None}
    result = admin_client(admin_key, url).create_coupon(code, kind, **fields)  # type: ignore[arg-type]
    emit(
        result, as_json, lambda data: ok(f"Created coupon {data.get('code')} ({data.get('kind')})")
    )


# --- test clocks ---------------------------------------------------------------------


@test_clock_app.command("create")
@handled
def clock_create(
    name: Annotated[str, typer.Option(help="A name to tell it by")] = "CLI test clock",
    frozen_time: Annotated[
        datetime | None, typer.Option("--frozen-time", help="Where it starts (default: now)")
    ] = None,
    admin_key: AdminKeyOpt = None,
    url: UrlOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a test clock; put accounts on it with `accounts create --test-clock ID`."""
    kwargs: dict[str, Any] = {}
    if frozen_time is not None:
        kwargs["frozen_time"] = frozen_time
    result = admin_client(admin_key, url).create_test_clock(name, **kwargs)
    emit(result, as_json, lambda data: ok(f"Test clock {data.get('id')} at {data.get('now')}"))


@test_clock_app.command("advance")
@handled
def clock_advance(
    clock_id: Annotated[str, typer.Argument(metavar="ID")],
    days: Annotated[int, typer.Option(min=0)] = 0,
    hours: Annotated[int, typer.Option(min=0)] = 0,
    seconds: Annotated[int, typer.Option(min=0)] = 0,
    admin_key: AdminKeyOpt = None,
    url: UrlOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Move the clock forward, running its accounts' due jobs (renewals, …) on the way."""
    if not (days or hours or seconds):
        raise typer.BadParameter("give --days, --hours or --seconds")
    result = admin_client(admin_key, url).advance_test_clock(
        clock_id, days=days or None, hours=hours or None, seconds=seconds or None
    )
    emit(
        result,
        as_json,
        lambda data: ok(
            f"Clock {data.get('id')} now at {data.get('now')} ({data.get('jobs_run')} jobs run)"
        ),
    )


# --- operator keys -------------------------------------------------------------------

OPERATOR_KEY_COLUMNS = [
    ("Id", "id"),
    ("Name", "name"),
    ("Key", "key_prefix"),
    ("Scopes", "scopes"),
    ("Created", "created_at"),
    ("Revoked", "revoked_at"),
]


@operator_keys_app.command("create")
@handled
def operator_keys_create(
    name: Annotated[str, typer.Argument(help="What the key is for, e.g. 'metering'")],
    scope: Annotated[
        list[str],
        typer.Option(
            "--scope",
            help="usage:write, accounts, plans, coupons, refunds, webhooks, test-clocks "
            "or admin (repeat for several)",
        ),
    ],
    admin_key: AdminKeyOpt = None,
    url: UrlOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Create an operator key; the key is printed once (store it now)."""
    result = admin_client(admin_key, url).create_operator_key(name, scope)

    def render(data: Any) -> None:
        ok(f"Operator key {data['id']} ({', '.join(data['scopes'])})")
        console.print(data["key"], markup=False, highlight=False)
        console.print("[dim]Shown once: store it now.[/dim]")

    emit(result, as_json, render)


@operator_keys_app.command("list")
@handled
def operator_keys_list(
    include_revoked: Annotated[bool, typer.Option("--include-revoked")] = False,
    admin_key: AdminKeyOpt = None,
    url: UrlOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """The operator keys (their first characters, never the keys)."""

    def render(data: Any) -> None:
        rows = [{**item, "scopes": ", ".join(item["scopes"])} for item in data["items"]]
        show_rows(rows, OPERATOR_KEY_COLUMNS, title="Operator keys", empty="No operator keys.")

    emit(admin_client(admin_key, url).list_operator_keys(include_revoked), as_json, render)


@operator_keys_app.command("revoke")
@handled
def operator_keys_revoke(
    key_id: Annotated[str, typer.Argument(metavar="ID")],
    admin_key: AdminKeyOpt = None,
    url: UrlOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Revoke an operator key."""
    result = admin_client(admin_key, url).revoke_operator_key(key_id)
    emit(result, as_json, lambda data: ok(f"Operator key {data['id']} revoked"))
