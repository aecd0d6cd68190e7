"""The hosted payment page a human opens from a payment link (sandbox mode)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool

from billfold import ratelimit
from billfold.api.deps import Services, ServicesDep, checkout_page_clock, client_address
from billfold.checkout import service
from billfold.checkout.models import CheckoutSession
from billfold.clock import now
from billfold.errors import RateLimited
from billfold.money import format_money
from billfold.subscriptions.models import Plan

# Each page runs on the time of the account its link belongs to (a sandbox test clock's).
router = APIRouter(include_in_schema=False, dependencies=[Depends(checkout_page_clock)])
_templates = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
)
STATIC_DIR = Path(__file__).parent / "static"
# The pages' scripts and styles are files under /checkout/static, so the policy needs no
# 'unsafe-inline': an injected script or style would not run; no other site may frame them.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": PAGE_CSP,
}


def _page(name: str, status_code: int = 200, **context: object) -> HTMLResponse:
    html = _templates.get_template(name).render(**context)
    return HTMLResponse(html, status_code=status_code, headers=_HEADERS)


def _closed(heading: str, message: str, status_code: int) -> HTMLResponse:
    return _page("closed.html", status_code, heading=heading, message=message)


def _expires_in(expires_at: datetime) -> str:
    seconds = max(0, int((expires_at - now()).total_seconds()))
    return f"{seconds // 60} min {seconds % 60:02d} s"


def _description(checkout: CheckoutSession, plan: Plan | None) -> str:
    if plan is None:
        return "Add funds to your agent's prepaid wallet"
    amount = format_money(plan.price_micros, plan.currency)
    return (
        f"Subscribe to {plan.name}: {amount} now, then {amount} every {plan.period} until cancelled"
    )


def _pay_page(
    checkout: CheckoutSession,
    plan: Plan | None,
    *,
    error: str | None = None,
    field: str | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    return _page(
        "pay.html",
        status_code,
        amount=format_money(checkout.amount_micros, checkout.currency),
        description=_description(checkout, plan),
        action=f"/pay/{checkout.id}",
        error=error,
        error_field=field,
        expires_at_iso=checkout.expires_at.isoformat(),
        expires_in_text=_expires_in(checkout.expires_at),
    )


def _show(checkout: CheckoutSession | None, plan: Plan | None = None) -> HTMLResponse:
    if checkout is None:
        return _closed("Payment link not found", "Check the link you were given.", 404)
    status = service.effective_status(checkout)
    if status == "complete":
        return _page(
            "success.html",
            amount=format_money(checkout.amount_micros, checkout.currency),
            session_id=checkout.id,
            subscribed=plan.name if plan is not None and checkout.subscription_id else None,
            success_url=checkout.success_url,
        )
    if status == "expired":
        return _closed(
            "This payment link has expired",
            "Nothing was charged. Ask the agent that sent it for a new link.",
            410,
        )
    if status == "processing":
        return _closed(
            "Payment in progress",
            "A payment for this link is being processed. Reload shortly.",
            409,
        )
    return _pay_page(checkout, plan)


def _load(services: Services, session_id: str) -> tuple[CheckoutSession | None, Plan | None]:
    with services.database.read() as session:
        checkout = session.get(CheckoutSession, session_id)
        plan = session.get(Plan, checkout.plan_id) if checkout and checkout.plan_id else None
        return checkout, plan


@router.get("/pay/{session_id}")
def show_payment_page(session_id: str, services: ServicesDep) -> Response:
    return _show(*_load(services, session_id))


def _split_expiry(value: str) -> tuple[str, str]:
    cleaned = value.replace(" ", "")
    month, _, year = cleaned.partition("/")
    return month, year


@router.post("/pay/{session_id}")
async def submit_payment(session_id: str, request: Request, services: ServicesDep) -> Response:
    try:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
    except UnicodeDecodeError:
        form = {}
    return await run_in_threadpool(_submit, services, session_id, form, client_address(request))


def _too_many_attempts(services: Services, session_id: str, client: str) -> Response | None:
    """Count this payment attempt per client address and per payment link (each one
    tokenizes a card and may charge it); the page to answer when over a limit."""
    settings = services.settings
    checkout, plan = _load(services, session_id)
    limits = [
        ratelimit.Limit(
            f"pay:client:{client}",
            settings.pay_max_attempts_per_client,
            settings.client_window_seconds,
        )
    ]
    if checkout is not None:  # unknown links cost no counter of their own
        limits.append(
            ratelimit.Limit(
                f"pay:session:{checkout.id}",
                settings.pay_max_attempts_per_session,
                settings.pay_session_window_seconds,
            )
        )
    try:
        with services.database.transaction() as session:
            ratelimit.take(session, limits, message="Too many payment attempts.")
    except RateLimited as exc:
        minutes = -(-int(exc.headers["Retry-After"]) // 60)
        message = (
            f"Too many payment attempts. Nothing was charged; try again in {minutes} "
            f"minute{'s' if minutes != 1 else ''}."
        )
        if checkout is not None and service.effective_status(checkout) == "open":
            page = _pay_page(checkout, plan, error=message, status_code=429)
        else:
            page = _closed("Too many attempts", message, 429)
        page.headers["Retry-After"] = exc.headers["Retry-After"]
        return page
    return None if checkout is not None else _show(None)


def _submit(services: Services, session_id: str, form: dict[str, str], client: str) -> Response:
    refused = _too_many_attempts(services, session_id, client)
    if refused is not None:
        return refused
    month, year = _split_expiry(form.get("card_expiry", ""))
    result = service.pay_with_card(
        services.database,
        services.sandbox,
        session_id=session_id,
        number=form.get("card_number", ""),
        exp_month=month,
        exp_year=year,
        cvc=form.get("card_cvc", ""),
    )
    checkout, plan = _load(services, session_id)
    if result.status in ("declined", "invalid_card", "unavailable") and checkout is not None:
        return _pay_page(
            checkout,
            plan,
            error=result.message,
            field=result.field,
            status_code=409 if result.status == "unavailable" else 402,
        )
    if result.status == "complete":
        # Post/Redirect/Get: reloading the success page does not resubmit the form.
        return RedirectResponse(f"/pay/{session_id}", status_code=303)
    return _show(checkout, plan)
