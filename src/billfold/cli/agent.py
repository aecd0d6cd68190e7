"""The agent's verbs: login, wallet, cards, payment links, coupons, plans, subscriptions,
invoices and billing info. Every command calls the SDK (`billfold.client.Billfold`)."""

from __future__ import annotations

import getpass
import io
import sys
import time
import webbrowser
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.text import Text

from billfold.cli.config import ConfigError, clear_config, config_path, resolve, save_config
from billfold.cli.output import (
    EXIT_CHECKOUT,
    JsonFlag,
    console,
    dig,
    emit,
    exit_code_for,
    fail,
    fmt,
    handled,
    money,
    ok,
    print_json,
    show_mapping,
    show_rows,
    to_data,
)

if TYPE_CHECKING:
    from billfold.client.agent import Billfold

wallet_app = typer.Typer(help="The prepaid wallet: balance, ledger, funding, withdrawals.")
auto_funding_app = typer.Typer(help="Automatic top-ups from the default card.")
cards_app = typer.Typer(help="Saved cards (payment methods).")
pay_link_app = typer.Typer(help="Payment links a person pays on the hosted page.")
coupons_app = typer.Typer(help="Coupons: validate and redeem (operator: create).")
plans_app = typer.Typer(
    help="Subscription plans: `billfold plans` lists them (operator: create).",
    invoke_without_command=True,
)
subscriptions_app = typer.Typer(help="Subscriptions: start, change, pause, cancel, fix.")
invoices_app = typer.Typer(help="Invoices and credit notes, and their PDFs.")
billing_app = typer.Typer(help="Billing info (name, address, tax id) and the overview.")
wallet_app.add_typer(auto_funding_app, name="auto-funding")


def agent_client() -> Billfold:
    """The SDK client for the stored (or BILLFOLD_URL / BILLFOLD_TOKEN) login."""
    from billfold.client.agent import Billfold

    target = resolve()
    if not target.token:
        raise ConfigError("not logged in: run `billfold login` or set BILLFOLD_TOKEN")
    return Billfold(target.url, target.token)


def amount_arg(value: str) -> Decimal:
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise typer.BadParameter(f"{value!r} is not an amount (e.g. 25 or 12.50)") from None
    if not amount.is_finite():
        raise typer.BadParameter(f"{value!r} is not an amount")
    return amount


Amount = Annotated[Decimal, typer.Argument(parser=amount_arg, metavar="AMOUNT", show_default=False)]
Card = Annotated[
    str | None, typer.Option("--card", help="Payment method (pm_…); default: the default card")
]
Key = Annotated[
    str | None, typer.Option("--key", help="Idempotency key: retrying with it never pays twice")
]


# --- login ---------------------------------------------------------------------------


def register(app: typer.Typer) -> None:
    app.command()(login)
    app.command()(logout)
    app.add_typer(wallet_app, name="wallet")
    app.add_typer(cards_app, name="cards")
    app.add_typer(pay_link_app, name="pay-link")
    app.add_typer(coupons_app, name="coupons")
    app.add_typer(plans_app, name="plans")
    app.add_typer(subscriptions_app, name="subscriptions")
    app.add_typer(invoices_app, name="invoices")
    app.add_typer(billing_app, name="billing")


@handled
def login(
    url: Annotated[
        str | None, typer.Option(help="Billfold's base URL (default: BILLFOLD_URL or stored)")
    ] = None,
    email: Annotated[str | None, typer.Option(help="Log in with this account's email")] = None,
    password: Annotated[
        str | None, typer.Option(help="The password (prompted for when left out)")
    ] = None,
    token: Annotated[
        str | None, typer.Option(help="Store this agent token instead of logging in")
    ] = None,
    admin_key: Annotated[
        str | None, typer.Option("--admin-key", help="Also store an operator admin key")
    ] = None,
    expires_in: Annotated[str, typer.Option(help="Token lifetime when logging in")] = "1_month",
    as_json: JsonFlag = False,
) -> None:
    """Log in (email + password, or --token) and store {url, token} for later commands."""
    from billfold.client.agent import Billfold

    target = resolve(url=url)
    if token is None and email is None and admin_key is None:
        fail("give --email (password prompted) or --token", "usage", 2)
    if token is None and email is not None:
        if password is None:
            password = getpass.getpass("Password: ")
        token = _login_token(Billfold(target.url), email, password, expires_in)
    stored: dict[str, Any] = {"url": target.url}
    if token is not None:
        stored["token"] = token
    if admin_key is not None:
        stored["admin_key"] = admin_key
    elif target.admin_key:
        stored["admin_key"] = target.admin_key
    path = save_config(stored)
    if as_json:
        print_json({"url": target.url, "config": str(path), "logged_in": token is not None})
        return
    ok(f"Logged in to {target.url}; credentials stored in {path} (mode 0600)")


def _login_token(client: Billfold, email: str, password: str, expires_in: str) -> str:
    token = dig(to_data(client.login(email, password, expires_in)), "access_token")  # type: ignore[arg-type]
    if not isinstance(token, str):
        fail("the server answered no token", "login_failed")
    return token


@handled
def logout(
    revoke: Annotated[
        bool, typer.Option("--revoke/--keep", help="Also revoke the token on the server")
    ] = False,
) -> None:
    """Forget the stored login (and with --revoke, revoke the token first)."""
    if revoke:
        agent_client().logout()
    if clear_config():
        ok(f"Logged out ({config_path()} removed)")
    else:
        console.print("Not logged in.")


# --- wallet --------------------------------------------------------------------------


def _show_balance(data: Any) -> None:
    currency = data.get("currency")
    console.print(f"[bold]Balance:[/bold] {money(data.get('balance'), currency)}", highlight=False)
    console.print(f"Withdrawable: {money(data.get('withdrawable'), currency)}", highlight=False)
    breakdown = data.get("breakdown") or {}
    if breakdown:
        console.print("Breakdown: " + fmt(breakdown), highlight=False)
    auto = data.get("auto_funding") or {}
    if auto:
        console.print("Auto-funding: " + fmt(auto), highlight=False)


@wallet_app.command("balance")
@handled
def wallet_balance(as_json: JsonFlag = False) -> None:
    """The wallet's balance, what is withdrawable, and auto-funding."""
    emit(agent_client().get_wallet_balance(), as_json, _show_balance)


TRANSACTION_COLUMNS = [
    ("When", "created_at"),
    ("Type", "type"),
    ("Status", "status"),
    ("Amount", "amount"),
    ("Use", "usecase"),
    ("Balance after", "balance_after"),
    ("Description", "description"),
]


@wallet_app.command("transactions")
@handled
def wallet_transactions(
    type_: Annotated[
        str | None, typer.Option("--type", help="credit or debit", show_default=False)
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=200)] = 50,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    as_json: JsonFlag = False,
) -> None:
    """The wallet's ledger, newest first."""
    result = agent_client().get_wallet_transactions(
        type=type_,  # type: ignore[arg-type]
        limit=limit,
        offset=offset,
    )

    def render(data: Any) -> None:
        show_rows(data.get("items", []), TRANSACTION_COLUMNS, title="Transactions")
        console.print(f"{data.get('total', 0)} in all", style="dim")

    emit(result, as_json, render)


@wallet_app.command("fund")
@handled
def wallet_fund(
    amount: Amount, card: Card = None, key: Key = None, as_json: JsonFlag = False
) -> None:
    """Charge a card and credit the wallet (min $10)."""
    result = agent_client().fund_wallet(amount, payment_method_id=card, idempotency_key=key)

    def render(data: Any) -> None:
        ok(
            f"Funded {money(data.get('amount'), data.get('currency'))}: balance "
            f"{money(data.get('balance'), data.get('currency'))} ({data.get('payment_intent_id')})"
        )

    emit(result, as_json, render)


@wallet_app.command("withdraw")
@handled
def wallet_withdraw(amount: Amount, as_json: JsonFlag = False) -> None:
    """Refund AMOUNT of the wallet to the cards it came from."""
    result = agent_client().withdraw(amount)

    def render(data: Any) -> None:
        ok(
            f"Withdrew {money(data.get('amount'), data.get('currency'))}: balance "
            f"{money(data.get('balance'), data.get('currency'))}"
        )

    emit(result, as_json, render)


@auto_funding_app.command("enable")
@handled
def auto_funding_enable(amount: Amount, threshold: Amount, as_json: JsonFlag = False) -> None:
    """Top up AMOUNT from the default card whenever the balance drops below THRESHOLD."""
    emit(agent_client().enable_auto_funding(amount, threshold), as_json)


@auto_funding_app.command("disable")
@handled
def auto_funding_disable(as_json: JsonFlag = False) -> None:
    """Stop automatic top-ups."""
    result = agent_client().disable_auto_funding()
    emit(result, as_json, lambda _: ok("Auto-funding disabled"))


# --- cards ---------------------------------------------------------------------------

CARD_COLUMNS = [
    ("Id", "id"),
    ("Brand", "brand"),
    ("Last 4", "last4"),
    ("Expires", "expires"),
    ("Default", "is_default"),
]


@cards_app.command("list")
@handled
def cards_list(as_json: JsonFlag = False) -> None:
    """Saved cards; the default is charged by auto-funding and renewals."""

    def render(data: Any) -> None:
        rows = [
            {**card, "expires": f"{card.get('exp_month')}/{card.get('exp_year')}"}
            for card in (data.get("items", []) if isinstance(data, dict) else data)
        ]
        show_rows(rows, CARD_COLUMNS, title="Cards", empty="No saved cards.")

    emit(agent_client().list_payment_methods(), as_json, render)


@cards_app.command("add")
@handled
def cards_add(
    payment_method: Annotated[str, typer.Argument(metavar="PM", help="pm_… to save")],
    default: Annotated[bool, typer.Option("--default/--no-default")] = True,
    as_json: JsonFlag = False,
) -> None:
    """Save a tokenized card (pm_…) to the account, as the default unless --no-default."""
    result = agent_client().add_payment_method(payment_method, make_default=default)
    emit(result, as_json, lambda d: ok(f"Saved {d.get('brand')} …{d.get('last4')} ({d.get('id')})"))


@cards_app.command("tokenize")
@handled
def cards_tokenize(
    number: Annotated[str, typer.Argument(help="Card number (sandbox test cards: 4242…)")],
    exp_month: Annotated[int, typer.Option(min=1, max=12)] = 12,
    exp_year: Annotated[int | None, typer.Option(help="Default: two years ahead")] = None,
    cvc: str = "123",
    as_json: JsonFlag = False,
) -> None:
    """Tokenize a card at the processor's client-side API; prints the pm_… id."""
    year = exp_year or datetime.now(UTC).year + 2
    pm = agent_client().create_payment_method(number, exp_month, year, cvc)
    pm_id = pm if isinstance(pm, str) else dig(to_data(pm), "id")
    if as_json:
        print_json({"id": pm_id})
    else:
        print(pm_id)


@cards_app.command("default")
@handled
def cards_default(
    payment_method: Annotated[str, typer.Argument(metavar="PM")], as_json: JsonFlag = False
) -> None:
    """Make PM the default card."""
    result = agent_client().set_default_payment_method(payment_method)
    emit(result, as_json, lambda _: ok(f"{payment_method} is the default card"))


@cards_app.command("remove")
@handled
def cards_remove(
    payment_method: Annotated[str, typer.Argument(metavar="PM")], as_json: JsonFlag = False
) -> None:
    """Remove a saved card."""
    result = agent_client().remove_payment_method(payment_method)
    emit(result, as_json, lambda _: ok(f"Removed {payment_method}"))


# --- payment links -------------------------------------------------------------------

WaitFlag = Annotated[
    bool, typer.Option("--wait", help="Show a countdown (and QR code) until it is paid")
]
MaxWait = Annotated[
    float | None, typer.Option("--max-wait", help="Give up after this many seconds")
]
Interval = Annotated[float, typer.Option("--interval", help="Seconds between polls")]
OpenFlag = Annotated[bool, typer.Option("--open", help="Open the link in a web browser")]


@pay_link_app.command("fund")
@handled
def pay_link_fund(
    amount: Amount,
    wait: WaitFlag = False,
    max_wait: MaxWait = None,
    interval: Interval = 2.0,
    open_: OpenFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """A link a person pays to fund the wallet (min $10)."""
    client = agent_client()
    link = to_data(client.create_payment_link("fund", amount=amount))
    _handle_link(client, link, "fund", wait, max_wait, interval, open_, as_json)


@pay_link_app.command("subscribe")
@handled
def pay_link_subscribe(
    plan_id: Annotated[int, typer.Argument(metavar="PLAN_ID")],
    wait: WaitFlag = False,
    max_wait: MaxWait = None,
    interval: Interval = 2.0,
    open_: OpenFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """A link a person pays to start a subscription to PLAN_ID."""
    client = agent_client()
    link = to_data(client.create_payment_link("subscribe", plan_id=plan_id))
    _handle_link(client, link, "subscribe", wait, max_wait, interval, open_, as_json)


@pay_link_app.command("confirm")
@handled
def pay_link_confirm(
    session_id: Annotated[str, typer.Argument(metavar="SESSION_ID", help="cs_…")],
    subscribe: Annotated[
        bool, typer.Option("--subscribe", help="The link was for a subscription")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Whether the person paid: exit 7 until then (and once the link expired)."""
    client = agent_client()
    emit(_confirm(client, "subscribe" if subscribe else "fund", session_id), as_json, _show_paid)


def _confirm(client: Billfold, purpose: str, session_id: str) -> Any:
    if purpose == "subscribe":
        return client.confirm_subscription_checkout(session_id)
    return client.confirm_wallet_checkout(session_id)


def _show_paid(data: Any) -> None:
    if data.get("object") == "subscription" or data.get("plan"):
        ok(f"Subscription {data.get('id')} is {data.get('status')} ({dig(data, 'plan.name')})")
    else:
        ok(
            f"Paid {money(data.get('amount'), data.get('currency'))}: balance "
            f"{money(data.get('balance'), data.get('currency'))}"
        )


def _handle_link(
    client: Billfold,
    link: dict[str, Any],
    purpose: str,
    wait: bool,
    max_wait: float | None,
    interval: float,
    open_browser: bool,
    as_json: bool,
) -> None:
    url = str(link.get("payment_url") or link.get("checkout_url"))
    if open_browser:
        webbrowser.open(url)
    if not wait:
        if as_json:
            print_json(link)
            return
        console.print(f"[bold]Pay here:[/bold] {url}", highlight=False, soft_wrap=True)
        console.print(f"Session: {link.get('session_id')}   expires {fmt(link.get('expires_at'))}")
        console.print(
            f"Then: billfold pay-link confirm {link.get('session_id')}"
            + (" --subscribe" if purpose == "subscribe" else ""),
            style="dim",
        )
        return
    result = wait_for_payment(
        client, link, purpose, max_wait=max_wait, interval=interval, quiet=as_json
    )
    emit(result, as_json, _show_paid)


def _expiry(link: dict[str, Any]) -> datetime | None:
    value = link.get("expires_at")
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return None


def qr_text(url: str) -> str | None:
    """`url` as a QR code of Unicode half blocks (None without the qrcode package)."""
    try:
        import qrcode
    except ImportError:  # pragma: no cover - qrcode is a dependency
        return None
    code = qrcode.QRCode(border=1)
    code.add_data(url)
    buffer = io.StringIO()
    code.print_ascii(out=buffer, invert=True)
    return buffer.getvalue().rstrip("\n")


class _Countdown:
    """The live panel: link, QR code and the time left, recomputed at every refresh."""

    def __init__(self, url: str, session_id: str, expires: datetime | None, deadline: float):
        self.url = url
        self.session_id = session_id
        self.expires = expires
        self.deadline = deadline
        self.qr = qr_text(url)
        self.polls = 0

    def __rich__(self) -> RenderableType:
        left = self.deadline - time.monotonic()
        if self.expires is not None:
            left = min(left, (self.expires - datetime.now(UTC)).total_seconds())
        left = max(0, int(left))
        parts: list[RenderableType] = [
            Text.assemble(("Pay here: ", "bold"), self.url),
            Text(f"Session {self.session_id}"),
        ]
        if self.qr:
            parts.append(Text(self.qr))
        else:
            parts.append(Text("(install qrcode for a QR code)", style="dim"))
        parts.append(
            Text.assemble(
                ("Waiting for the payment: ", "bold"),
                (f"{left // 3600:d}:{left % 3600 // 60:02d}:{left % 60:02d}", "bold yellow"),
                f" left  ({self.polls} checks)",
            )
        )
        return Panel(Group(*parts), title="Billfold payment link", expand=False)


def wait_for_payment(
    client: Billfold,
    link: dict[str, Any],
    purpose: str,
    *,
    max_wait: float | None = None,
    interval: float = 2.0,
    quiet: bool = False,
    on_poll: Callable[[], None] | None = None,
) -> Any:
    """Poll confirm until the person paid; a Rich countdown to expires_at meanwhile.

    The link is printed (and flushed) first, so a script reading the output can hand it
    on. Raises the SDK's CheckoutExpired; exits 7 when `max_wait` runs out first."""
    from billfold.client.errors import BillfoldError

    url = str(link.get("payment_url") or link.get("checkout_url"))
    session_id = str(link.get("session_id"))
    expires = _expiry(link)
    deadline = time.monotonic() + (max_wait if max_wait is not None else 10 * 86_400)
    stream = sys.stderr if quiet else sys.stdout
    print(f"Payment link: {url}", file=stream, flush=True)
    print(f"Session: {session_id}", file=stream, flush=True)
    view = _Countdown(url, session_id, expires, deadline)
    live_console = console if not quiet else None
    with Live(view, console=live_console, refresh_per_second=2, transient=False) as live:
        while True:
            view.polls += 1
            try:
                return _confirm(client, purpose, session_id)
            except BillfoldError as exc:
                if exit_code_for(exc) != EXIT_CHECKOUT or getattr(exc, "code", "") == (
                    "checkout_expired"
                ):
                    raise
            if on_poll is not None:
                on_poll()
            live.refresh()
            if time.monotonic() + interval > deadline:
                break
            time.sleep(interval)
    fail(
        f"not paid within {max_wait:g} s (session {session_id}; still payable until "
        f"{fmt(link.get('expires_at'))})",
        "checkout_not_completed",
        EXIT_CHECKOUT,
    )


# --- coupons -------------------------------------------------------------------------

Purchase = Annotated[
    Decimal | None,
    typer.Option("--purchase", parser=amount_arg, help="The card purchase the coupon goes with"),
]


@coupons_app.command("validate")
@handled
def coupons_validate(code: str, purchase: Purchase = None, as_json: JsonFlag = False) -> None:
    """Whether CODE can be redeemed (for a purchase of --purchase)."""
    result = agent_client().validate_coupon(code, purchase_amount=purchase)

    def render(data: Any) -> None:
        if data.get("valid"):
            ok(f"{code} is valid")
        else:
            error = data.get("error") or {}
            console.print(
                f"[red]✗[/red] {code} is not valid: {error.get('code')}: {error.get('message')}",
                highlight=False,
            )
        show_mapping({k: v for k, v in data.items() if k not in ("valid", "error")})

    emit(result, as_json, render)


@coupons_app.command("redeem")
@handled
def coupons_redeem(
    code: str, card: Card = None, purchase: Purchase = None, as_json: JsonFlag = False
) -> None:
    """Redeem CODE (a bonus coupon with --purchase N charges N to --card)."""
    result = agent_client().redeem_coupon(code, payment_method_id=card, purchase_amount=purchase)

    def render(data: Any) -> None:
        ok(
            f"Redeemed {code}: +{money(data.get('credit_amount'))}, "
            f"balance {money(data.get('balance'))}"
        )

    emit(result, as_json, render)


# --- plans ---------------------------------------------------------------------------

PLAN_COLUMNS = [
    ("Id", "id"),
    ("Name", "name"),
    ("Price", "price"),
    ("Period", "period"),
    ("Kind", "kind"),
    ("Credits", "included_credits"),
    ("Trial days", "trial_days"),
    ("Features", "features"),
]


def _show_plans(data: Any) -> None:
    show_rows(data.get("subscription_plans", []), PLAN_COLUMNS, title="Plans", empty="No plans.")
    payg = data.get("pay_as_you_go") or {}
    if payg.get("available"):
        console.print(
            f"Pay as you go: min top-up ${payg.get('minimum_topup_usd')}, auto-payments "
            f"{fmt(dig(payg, 'auto_payments.supported'))}",
            highlight=False,
        )


@plans_app.callback()
def plans_default(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """`billfold plans` alone lists the plans an agent can subscribe to."""
    if ctx.invoked_subcommand is None:
        handled(_list_plans)(as_json)


def _list_plans(as_json: bool) -> None:
    emit(agent_client().list_plans(), as_json, _show_plans)


@plans_app.command("list")
@handled
def plans_list(as_json: JsonFlag = False) -> None:
    """The plans an agent can subscribe to, and pay-as-you-go."""
    _list_plans(as_json)


# --- subscriptions -------------------------------------------------------------------

SUBSCRIPTION_COLUMNS = [
    ("Id", "id"),
    ("Plan", "plan.name"),
    ("Status", "status"),
    ("Period end", "current_period_end"),
    ("Cancels", "cancel_at_period_end"),
    ("Payment", "payment_status"),
]


def _show_subscription(data: Any) -> None:
    if data.get("checkout_url") or data.get("payment_url"):
        console.print(
            "[bold]A person can subscribe at:[/bold] "
            f"{data.get('checkout_url') or data.get('payment_url')}",
            highlight=False,
            soft_wrap=True,
        )
        console.print(f"Session: {data.get('session_id')}")
        return
    fields = {
        "id": data.get("id"),
        "status": data.get("status"),
        "plan": f"{dig(data, 'plan.name')} (#{data.get('plan_id')}, "
        f"${dig(data, 'plan.price')}/{dig(data, 'plan.period')})",
        "current period": f"{fmt(data.get('current_period_start'))} → "
        f"{fmt(data.get('current_period_end'))}",
        "cancel at period end": data.get("cancel_at_period_end"),
        "scheduled change": data.get("scheduled_change"),
        "latest invoice": (
            f"{dig(data, 'latest_invoice.number')} {dig(data, 'latest_invoice.status')} "
            f"${dig(data, 'latest_invoice.total')}"
            if data.get("latest_invoice")
            else None
        ),
        "payment status": data.get("payment_status"),
        "next retry": data.get("next_retry_at"),
    }
    show_mapping({k: v for k, v in fields.items() if v is not None})


SubscriptionId = Annotated[str, typer.Argument(metavar="ID", help="sub_…")]


@subscriptions_app.command("list")
@handled
def subscriptions_list(as_json: JsonFlag = False) -> None:
    """Every subscription (all kinds and states), newest first."""

    def render(data: Any) -> None:
        show_rows(data.get("items", []), SUBSCRIPTION_COLUMNS, title="Subscriptions")

    emit(agent_client().list_subscriptions(), as_json, render)


@subscriptions_app.command("create")
@handled
def subscriptions_create(
    plan_id: Annotated[int, typer.Argument(metavar="PLAN_ID")],
    card: Annotated[
        str | None,
        typer.Option("--card", help="Charge pm_… now (headless); without: a checkout link"),
    ] = None,
    key: Key = None,
    as_json: JsonFlag = False,
) -> None:
    """Subscribe to PLAN_ID, charged to --card now; without --card, a link for a person."""
    client = agent_client()
    result: Any = (
        client.create_subscription_headless(plan_id, card, idempotency_key=key)
        if card
        else client.create_subscription(plan_id)
    )
    emit(result, as_json, _show_subscription)


@subscriptions_app.command("status")
@handled
def subscriptions_status(subscription_id: SubscriptionId, as_json: JsonFlag = False) -> None:
    """A subscription's status, period, scheduled change and latest invoice."""
    emit(agent_client().get_subscription_status(subscription_id), as_json, _show_subscription)


@subscriptions_app.command("change")
@handled
def subscriptions_change(
    subscription_id: SubscriptionId,
    new_plan: Annotated[int, typer.Argument(metavar="NEW_PLAN")],
    as_json: JsonFlag = False,
) -> None:
    """Move to NEW_PLAN: an upgrade now (prorated), anything else at the period's end."""
    emit(agent_client().update_subscription(subscription_id, new_plan), as_json, _show_subscription)


def _simple(name: str, doc: str) -> Callable[..., None]:
    def command(subscription_id: SubscriptionId, as_json: JsonFlag = False) -> None:
        emit(getattr(agent_client(), name)(subscription_id), as_json, _show_subscription)

    command.__doc__ = doc
    command.__name__ = f"subscriptions_{name}"
    return handled(command)


subscriptions_app.command("pause")(_simple("pause_subscription", "Pause: no renewals."))
subscriptions_app.command("resume")(
    _simple("resume_subscription", "Resume: the period end moves by the paused time.")
)
subscriptions_app.command("reset-cycle")(
    _simple("reset_subscription_cycle", "Start a new period now, less the unused time.")
)
subscriptions_app.command("fix-payment")(
    _simple("fix_payment", "Retry the failed payment now with the default card.")
)


@subscriptions_app.command("cancel")
@handled
def subscriptions_cancel(
    subscription_id: SubscriptionId,
    now: Annotated[
        bool, typer.Option("--now", help="End now, crediting the unused time to the wallet")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Cancel at the period's end (or --now)."""
    result = agent_client().cancel_subscription(subscription_id, at_period_end=not now)
    emit(result, as_json, _show_subscription)


@subscriptions_app.command("charge")
@handled
def subscriptions_charge(amount: Amount, card: Card = None, as_json: JsonFlag = False) -> None:
    """Charge a custom amount ($5-$10,000) to the wallet."""
    emit(agent_client().charge_subscription_amount(amount, payment_method_id=card), as_json)


# --- invoices ------------------------------------------------------------------------

INVOICE_COLUMNS = [
    ("Id", "id"),
    ("Number", "number"),
    ("Kind", "object"),
    ("Status", "status"),
    ("Total", "total"),
    ("Tax", "tax"),
    ("Reason", "billing_reason"),
    ("Issued", "issued_at"),
]
InvoiceId = Annotated[str, typer.Argument(metavar="ID", help="in_… or cn_…")]


@invoices_app.command("list")
@handled
def invoices_list(as_json: JsonFlag = False) -> None:
    """Invoices and credit notes, newest first."""

    def render(data: Any) -> None:
        items = data.get("items", []) if isinstance(data, dict) else data
        show_rows(items, INVOICE_COLUMNS, title="Invoices", empty="No invoices.")

    emit(agent_client().list_invoices(), as_json, render)


def show_invoice(data: Any) -> None:
    currency = data.get("currency")
    console.print(
        f"[bold]{data.get('object', 'invoice').replace('_', ' ').title()} "
        f"{data.get('number') or data.get('id')}[/bold]  {data.get('status')}  "
        f"issued {fmt(data.get('issued_at'))}",
        highlight=False,
    )
    show_rows(
        data.get("lines", []),
        [("Description", "description"), ("Qty", "quantity"), ("Amount", "amount")],
        empty="No lines.",
    )
    console.print(
        f"Subtotal {money(data.get('subtotal'), currency)}  Tax {money(data.get('tax'), currency)}"
        f"  [bold]Total {money(data.get('total'), currency)}[/bold]  Paid "
        f"{money(data.get('amount_paid'), currency)}",
        highlight=False,
    )
    if data.get("reverse_charge_note"):
        console.print(data["reverse_charge_note"], style="dim")


@invoices_app.command("show")
@handled
def invoices_show(invoice_id: InvoiceId, as_json: JsonFlag = False) -> None:
    """An invoice with its lines."""
    emit(agent_client().get_invoice(invoice_id), as_json, show_invoice)


@invoices_app.command("pdf")
@handled
def invoices_pdf(
    invoice_id: InvoiceId,
    out: Annotated[
        Path | None, typer.Option("--out", help="Where to save it (default: NUMBER.pdf)")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Download the invoice's PDF."""
    client = agent_client()
    if out is None:
        number = dig(to_data(client.get_invoice(invoice_id)), "number") or invoice_id
        out = Path(f"{number}.pdf")
    saved = client.download_invoice_pdf(invoice_id, out)
    path = Path(saved) if isinstance(saved, str | Path) else out
    if as_json:
        print_json({"invoice_id": invoice_id, "path": str(path), "bytes": path.stat().st_size})
    else:
        ok(f"Saved {path} ({path.stat().st_size} bytes)")


# --- billing info --------------------------------------------------------------------


def _pairs(values: list[str]) -> dict[str, str | None]:
    fields: dict[str, str | None] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"{item!r}: use field=value", param_hint="--set")
        fields[name.strip()] = value if value != "" else None
    return fields


@billing_app.command("info")
@handled
def billing_info(
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="field=value (repeatable): name, email, tax_id, tax_id_type, address_line1, "
            "address_line2, address_city, address_state, address_postal_code, "
            "address_country; an empty value clears the field",
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Show the billing info, or update some fields with --set."""
    client = agent_client()
    result = client.update_billing_info(**_pairs(set_)) if set_ else client.get_billing_info()

    def render(data: Any) -> None:
        show_mapping({k: v for k, v in data.items() if k != "address"}, title="Billing info")

    emit(result, as_json, render)


@billing_app.command("overview")
@handled
def billing_overview(as_json: JsonFlag = False) -> None:
    """Balance, subscriptions and recent charges at a glance."""
    emit(agent_client().get_billing_overview(), as_json)
