"""`billfold demo`: an agent plays the reference's three payment paths, a subscription
lives through a month on a test clock, and an invoice PDF lands on disk.

Against --url (a running server; the operator key from --admin-key, BILLFOLD_ADMIN_KEY or
the stored config), or by default an embedded server started here in a background thread
on a free port: SQLite in a temporary folder, the sandbox processor, a job worker beside
it, as `billfold serve` runs. Every agent and operator step goes through the SDK; only
the human's part (paying the hosted page) is a plain form POST, as a browser would send.
"""

from __future__ import annotations

import secrets
import tempfile
import time
import uuid
import webbrowser
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from billfold.api.embedded import local_socket, serving, start_app
from billfold.cli.agent import TRANSACTION_COLUMNS, qr_text, show_invoice, wait_for_payment
from billfold.cli.config import resolve
from billfold.cli.output import (
    console,
    dig,
    fail,
    fmt,
    handled,
    money,
    ok,
    show_rows,
    to_data,
)
from billfold.config import Settings

TEST_CARD = "4242424242424242"


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


@contextmanager
def embedded_server() -> Iterator[tuple[str, str]]:
    """A Billfold of its own on a free port (SQLite in a temp dir, sandbox processor, a
    job worker): its URL and admin key."""
    with tempfile.TemporaryDirectory(prefix="billfold-demo-") as folder:
        sock = local_socket()
        url = "http://{}:{}".format(*sock.getsockname()[:2])
        admin_key = f"bf_admin_{secrets.token_urlsafe(24)}"
        settings = Settings(
            processor="sandbox",
            database_url=f"sqlite:///{Path(folder) / 'billfold.db'}",
            admin_key=admin_key,
            public_url=url,
            var_dir=Path(folder),
        )
        running = start_app(settings, admin_key)
        try:
            with serving(running.app, sock):
                yield url, admin_key
        finally:
            running.close()


class Steps:
    def __init__(self) -> None:
        self.number = 0
        self.started = time.monotonic()

    def section(self, title: str) -> None:
        console.print()
        console.rule(f"[bold cyan]{title}")

    def step(self, actor: str, text: str) -> None:
        self.number += 1
        colour = {"agent": "green", "operator": "magenta", "human": "yellow"}.get(actor, "white")
        console.print(
            f"[dim]{self.number:>2}.[/dim] [{colour}]{actor:>8}[/{colour}]  {text}",
            highlight=False,
            soft_wrap=True,
        )


@handled
def demo(
    url: Annotated[
        str | None,
        typer.Option(help="A running Billfold (default: an embedded one started for the demo)"),
    ] = None,
    admin_key: Annotated[
        str | None, typer.Option("--admin-key", help="The operator key of --url's server")
    ] = None,
    out_dir: Annotated[
        Path, typer.Option("--out-dir", help="Where the invoice PDF is saved")
    ] = Path("."),
    open_browser: Annotated[
        bool,
        typer.Option("--open", help="Open the payment link in a browser and wait for a person"),
    ] = False,
    max_wait: Annotated[
        float, typer.Option("--max-wait", help="With --open: how long to wait for the person")
    ] = 300.0,
) -> None:
    """Play an agent through the three payment paths, a month on a test clock and a PDF.

    Headless funding, a card saved with a setup intent, a human-paid link, a
    subscription lived through a month on a test clock and an invoice PDF on disk."""
    started = time.monotonic()
    if url is None:
        console.print("[dim]Starting an embedded Billfold (SQLite, sandbox processor)…[/dim]")
        with embedded_server() as (server_url, key):
            console.print(f"[dim]Embedded server at {server_url}[/dim]")
            _play(server_url, key, out_dir, open_browser, max_wait)
    else:
        target = resolve(url=url, admin_key=admin_key)
        if not target.admin_key:
            fail(
                "the demo needs the server's admin key: --admin-key or BILLFOLD_ADMIN_KEY",
                "not_configured",
                5,
            )
        _play(target.url, target.admin_key, out_dir, open_browser, max_wait)
    console.print()
    console.rule(f"[bold green]Demo complete in {time.monotonic() - started:.1f} s")


def _play(url: str, admin_key: str, out_dir: Path, open_browser: bool, max_wait: float) -> None:
    from billfold.client.admin import BillfoldAdmin
    from billfold.client.agent import Billfold

    steps = Steps()
    admin = BillfoldAdmin(url, admin_key)
    year = datetime.now(UTC).year + 2
    run = uuid.uuid4().hex[:8]

    steps.section("Set-up")
    email = f"demo-agent-{run}@example.com"
    account = to_data(admin.create_account(email, secrets.token_urlsafe(12)))
    steps.step("operator", f"created account {account['id']} ({email})")
    token = to_data(admin.issue_token(account["id"]))["access_token"]
    steps.step("operator", "issued an agent token for it")
    agent = Billfold(url, token)

    # 1. Headless: the agent tokenizes a test card at the processor and funds the wallet.
    steps.section("Path 1 — headless: the agent has the card")
    config = to_data(agent.get_stripe_config())
    steps.step("agent", f"stripe-config: tokenize at {config['api_base']} ({config['processor']})")
    pm = _pm_id(agent.create_payment_method(TEST_CARD, 12, year, "123"))
    steps.step("agent", f"tokenized test card {TEST_CARD[:4]}…{TEST_CARD[-4:]} → {pm}")
    funded = to_data(
        agent.fund_wallet(Decimal(25), payment_method_id=pm, idempotency_key=f"demo-fund-{run}")
    )
    steps.step(
        "agent",
        f"funded $25 ({funded['payment_intent_id']}): balance {money(funded['balance'])}",
    )
    usage = to_data(admin.create_usage_charge(account["id"], Decimal("3.75"), "tokens"))
    steps.step(
        "operator", f"charged $3.75 of usage (tokens): balance {money(usage['balance_after'])}"
    )

    # 2. Setup intent: save a card without charging it, then attach it.
    steps.section("Path 2 — setup intent: save a card now, charge it later")
    intent = agent.create_setup_intent()
    setup = to_data(intent)
    steps.step("agent", f"created setup intent {setup['setup_intent_id']}")
    confirmed = to_data(agent.confirm_setup_intent(intent, TEST_CARD, 12, year, "123"))
    saved_pm = str(confirmed["payment_method"])
    steps.step(
        "agent",
        f"confirmed it at {config['api_base']} → {confirmed.get('status')}, card {saved_pm}",
    )
    card = to_data(agent.add_payment_method(saved_pm, make_default=True))
    steps.step("agent", f"attached {card['brand']} …{card['last4']} as the default card")

    # 3. Human-assisted: a payment link a person pays; the agent confirms.
    steps.section("Path 3 — human-assisted: a person pays a link")
    link = to_data(agent.create_payment_link("fund", amount=Decimal(20)))
    steps.step("agent", f"payment link for $20: {link['payment_url']}")
    steps.step("agent", f"session {link['session_id']}, expires {fmt(link['expires_at'])}")
    if open_browser:
        steps.step("human", "opening it in your browser: pay with 4242 4242 4242 4242")
        webbrowser.open(str(link["payment_url"]))
        result = to_data(wait_for_payment(agent, link, "fund", max_wait=max_wait, interval=2))
    else:
        qr = qr_text(str(link["payment_url"]))
        if qr:
            console.print(qr, highlight=False)
        if config.get("processor") != "sandbox":
            steps.step("human", "this server's links go to Stripe Checkout: waiting for a person")
            result = to_data(wait_for_payment(agent, link, "fund", max_wait=max_wait, interval=2))
        else:
            _pay_hosted_page(str(link["payment_url"]))
            steps.step("human", "paid it on the hosted page with the test card")
            result = to_data(agent.confirm_wallet_checkout(link["session_id"]))
    steps.step("agent", f"confirm-checkout: {result['status']}, balance {money(result['balance'])}")
    transactions = to_data(agent.get_wallet_transactions(limit=10))
    show_rows(transactions.get("items", []), TRANSACTION_COLUMNS, title="The wallet's ledger")

    # 4. A subscription lived through a month on a test clock.
    steps.section("A month of subscription on a test clock")
    clock = to_data(admin.create_test_clock(f"demo {run}"))
    steps.step("operator", f"created test clock {clock['id']} at {fmt(clock['now'])}")
    sub_email = f"demo-subscriber-{run}@example.com"
    subscriber = to_data(
        admin.create_account(sub_email, secrets.token_urlsafe(12), test_clock_id=clock["id"])
    )
    steps.step("operator", f"created account {subscriber['id']} on the clock")
    plan = to_data(
        admin.create_plan(
            f"Demo Pro {run}",
            Decimal(20),
            "month",
            ["10k requests", "priority queue"],
            included_credits=Decimal(15),
        )
    )
    steps.step("operator", f"created plan #{plan['id']} {plan['name']}: $20/month, $15 credits")
    sub_agent = Billfold(url, to_data(admin.issue_token(subscriber["id"]))["access_token"])
    sub_pm = _pm_id(sub_agent.create_payment_method(TEST_CARD, 12, year, "123"))
    subscription = to_data(sub_agent.create_subscription_headless(plan["id"], sub_pm))
    steps.step(
        "agent",
        f"subscribed headless: {subscription['id']} {subscription['status']}, period ends "
        f"{fmt(subscription['current_period_end'])}",
    )
    advanced = to_data(admin.advance_test_clock(clock["id"], days=31))
    steps.step(
        "operator",
        f"advanced the clock 31 days to {fmt(advanced['now'])} "
        f"({advanced.get('jobs_run')} jobs run)",
    )
    status = to_data(sub_agent.get_subscription_status(subscription["id"]))
    steps.step(
        "agent",
        f"status: {status['status']}, period {fmt(status['current_period_start'])} → "
        f"{fmt(status['current_period_end'])}, latest invoice "
        f"{dig(status, 'latest_invoice.number')} ({status.get('payment_status')})",
    )
    invoices = to_data(sub_agent.list_invoices())
    items = invoices.get("items", []) if isinstance(invoices, dict) else invoices
    renewal = next(
        (i for i in items if i.get("billing_reason") == "subscription_cycle"),
        None,
    ) or (dig(status, "latest_invoice") or (items[0] if items else None))
    if renewal is None:
        fail("no renewal invoice after the month", "demo_failed")
    invoice = to_data(sub_agent.get_invoice(renewal["id"]))
    steps.step("agent", f"the renewal invoice {invoice['number']}:")
    show_invoice(invoice)

    # 5. The invoice's PDF on disk.
    steps.section("The invoice PDF")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{invoice['number'] or invoice['id']}.pdf"
    sub_agent.download_invoice_pdf(invoice["id"], path)
    steps.step("agent", f"saved {path} ({path.stat().st_size} bytes)")
    ok(f"Invoice PDF: {path.resolve()}")


def _pm_id(result: Any) -> str:
    return result if isinstance(result, str) else str(dig(to_data(result), "id"))


def _pay_hosted_page(payment_url: str) -> None:
    """The human's part: the sandbox's hosted card form, submitted as a browser would."""
    response = httpx.post(
        payment_url,
        data={"card_number": TEST_CARD, "card_expiry": "12/34", "card_cvc": "123"},
        follow_redirects=False,
        timeout=30,
    )
    if response.status_code >= 400:
        fail(f"the hosted page refused the payment ({response.status_code})", "demo_failed")
