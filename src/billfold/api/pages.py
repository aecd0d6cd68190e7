"""The page a human opens from a payment link: the card form (sandbox), or a redirect to
the processor's own payment page (Stripe Checkout), and the success page either way."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool

from billfold.api.deps import Services, ServicesDep, checkout_page_clock, client_address
from billfold.application.usecases import checkout as usecases
from billfold.checkout.models import CheckoutSession
from billfold.clock import now
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


def _show(link: usecases.HostedLink | None) -> Response:
    if link is None:
        return _closed("Payment link not found", "Check the link you were given.", 404)
    checkout, plan = link.checkout, link.plan
    status = link.status
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
    if link.pay_at is not None:  # the processor's own page takes the card (Stripe Checkout)
        return RedirectResponse(link.pay_at, status_code=303, headers=_HEADERS)
    return _pay_page(checkout, plan)


@router.get("/pay/{session_id}")
def show_payment_page(session_id: str, request: Request, services: ServicesDep) -> Response:
    return _show(
        usecases.open_hosted_link(services, session_id=session_id, base_url=str(request.base_url))
    )


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


def _too_many_attempts(link: usecases.HostedLink | None, retry_after: str) -> HTMLResponse:
    minutes = -(-int(retry_after) // 60)
    message = (
        f"Too many payment attempts. Nothing was charged; try again in {minutes} "
        f"minute{'s' if minutes != 1 else ''}."
    )
    if link is not None and link.status == "open":
        page = _pay_page(link.checkout, link.plan, error=message, status_code=429)
    else:
        page = _closed("Too many attempts", message, 429)
    page.headers["Retry-After"] = retry_after
    return page


def _submit(services: Services, session_id: str, form: dict[str, str], client: str) -> Response:
    month, year = _split_expiry(form.get("card_expiry", ""))
    paid = usecases.pay_hosted_link(
        services,
        session_id=session_id,
        number=form.get("card_number", ""),
        exp_month=month,
        exp_year=year,
        cvc=form.get("card_cvc", ""),
        client=client,
    )
    if paid.retry_after is not None:
        return _too_many_attempts(paid.link, paid.retry_after)
    result, link = paid.result, paid.link
    if result is None:
        return _show(None)
    if result.status in ("declined", "invalid_card", "unavailable") and link is not None:
        return _pay_page(
            link.checkout,
            link.plan,
            error=result.message,
            field=result.field,
            status_code=409 if result.status == "unavailable" else 402,
        )
    if result.status == "complete":
        # Post/Redirect/Get: reloading the success page does not resubmit the form.
        return RedirectResponse(f"/pay/{session_id}", status_code=303)
    return _show(link)
