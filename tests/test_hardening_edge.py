"""The HTTP edge holds against hostile and careless input (issue 9: defects 5, 6, 12, 13, 14,
the signed-link logs, the security headers, hidden characters in billing info), and the
invariant "hostile input is never stored": whatever text is posted into any text field,
every later read of the account answers 2xx."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import unicodedata
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, update

from billfold.api.app import MAX_BODY_BYTES
from billfold.api.embedded import local_socket
from billfold.ledger.models import LedgerTransaction
from billfold.services import Services
from tests.helpers import Agent, Api, assert_error, decimal_json

BILLFOLD = Path(sys.executable).parent / "billfold"
JSON = {"Content-Type": "application/json"}


def raw_json(value: Any) -> bytes:
    """JSON as a client could send it: lone surrogates become the escape \\udxxx."""
    return json.dumps(value, ensure_ascii=True).encode()


def post_raw(
    url: str, body: bytes, headers: dict[str, str], method: str = "POST"
) -> requests.Response:
    return requests.request(method, url, data=body, headers={**headers, **JSON}, timeout=30)


def usage(api: Api, body: dict[str, Any], key: str | None = None) -> requests.Response:
    headers = dict(api.admin_headers)
    if key:
        headers["Idempotency-Key"] = key
    return post_raw(api.admin_url("/usage-charges"), raw_json(body), headers)


def reads_of(api: Api, agent: Agent) -> dict[str, requests.Response]:
    """Every read of the account an agent or the operator makes."""
    paths = [
        "/wallet/balance",
        "/wallet/transactions",
        "/billing/overview",
        "/billing/info",
        "/billing/invoices",
        "/subscriptions",
        "/subscriptions/plans",
    ]
    answers = {path: agent.get(path) for path in paths}
    answers["admin /accounts/{id}"] = api.admin_get(f"/accounts/{agent.account_id}")
    answers["admin /plans"] = api.admin_get("/plans")
    answers["admin /invoice-settings"] = api.admin_get("/invoice-settings")
    invoices = answers["/billing/invoices"]
    if invoices.status_code == 200 and invoices.json()["data"]["items"]:
        newest = invoices.json()["data"]["items"][0]["id"]
        answers["invoice detail"] = agent.get(f"/billing/invoices/{newest}")
        link = agent.get(f"/billing/invoices/{newest}/pdf")
        answers["invoice pdf link"] = link
        if link.status_code == 200:
            answers["invoice pdf"] = requests.get(link.json()["data"]["url"], timeout=30)
    return answers


def assert_reads_ok(api: Api, agent: Agent) -> None:
    failing = {
        name: (r.status_code, r.text[:200])
        for name, r in reads_of(api, agent).items()
        if not 200 <= r.status_code < 300
    }
    assert not failing, failing


# --- Defect 5: the body cap holds for bodies without a Content-Length ----------------------


def _chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        piece = min(size, total - sent)
        sent += piece
        yield b"x" * piece


@pytest.mark.parametrize("route", ["login", "admin", "page"])
def test_a_chunked_body_over_the_cap_is_refused_413(api: Api, route: str) -> None:
    """3 MB streamed with Transfer-Encoding: chunked and no Content-Length: 413, not 422."""
    url, headers = {
        "login": (api.agent_url("/auth/login"), JSON),
        "admin": (api.admin_url("/usage-charges"), {**api.admin_headers, **JSON}),
        "page": (
            f"{api.base_url}/pay/cs_nothing",
            {"Content-Type": "application/x-www-form-urlencoded"},
        ),
    }[route]
    with httpx.Client(timeout=30) as client:
        response = client.post(url, content=_chunks(3_000_000), headers=headers)
    assert response.status_code == 413, response.text
    assert "content-length" not in {k.lower() for k in response.request.headers}
    body = response.json()
    assert body["error"]["code"] == "payload_too_large"
    assert body["error"]["request_id"].startswith("req_")
    # The server is still healthy and answers the next request normally.
    assert requests.get(f"{api.base_url}/readyz", timeout=10).status_code == 200
    listed = requests.get(api.admin_url("/plans"), headers=api.admin_headers, timeout=10)
    assert listed.status_code == 200


def test_the_cap_answers_before_the_body_ends(api: Api) -> None:
    """The server refuses while the body streams: it answers 413 though the client never
    finishes sending (a server that read the whole body first would never answer)."""
    parts = urlsplit(api.base_url)
    assert parts.hostname is not None and parts.port is not None
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(
            b"POST /api/agents/v1/auth/login HTTP/1.1\r\nHost: test\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"x" * 65_536
        for _ in range(MAX_BODY_BYTES // len(chunk) + 1):  # just past the cap, then stop
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        answer = b""
        while b"\r\n\r\n" not in answer:
            data = sock.recv(65_536)
            assert data, answer
            answer += data
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b"connection: close" in rest.lower()
    assert requests.get(f"{api.base_url}/healthz", timeout=10).status_code == 200


def test_a_body_just_under_the_cap_still_reaches_validation(api: Api) -> None:
    body = b'{"email": "a@example.com", "password": "' + b"p" * (MAX_BODY_BYTES - 100) + b'"}'
    with httpx.Client(timeout=30) as client:
        response = client.post(
            api.agent_url("/auth/login"), content=iter([body[:500_000], body[500_000:]])
        )
    assert response.status_code == 422, response.text  # the password is too long, not 413


# --- Defect 6: lone surrogates are refused; nothing stored breaks a read ---------------------


LONE_SURROGATES = ["\udfff", "\ud800", "a\udc00b", "\ud83d"]


def test_a_lone_surrogate_in_metadata_is_refused(api: Api) -> None:
    agent = api.new_agent()
    assert agent.fund(20).status_code == 200
    for text in LONE_SURROGATES:
        for metadata in ({"note": text}, {text: "key"}, {"deep": [{"x": text}]}):
            body = {"account_id": agent.account_id, "amount": 1, "usecase": "x"}
            body["metadata"] = metadata
            assert b"\\ud" in raw_json(body)  # sent as the JSON escape
            error = assert_error(usage(api, body), 422, "invalid_request")
            assert "surrogate" in error["message"]
    assert agent.balance() == 20
    assert_reads_ok(api, agent)


def test_paired_surrogate_escapes_are_ordinary_characters(api: Api) -> None:
    """ "\\ud83d\\ude00" in JSON is one character (😀): accepted and read back intact."""
    agent = api.new_agent()
    assert agent.fund(20).status_code == 200
    body = {"account_id": agent.account_id, "amount": 1, "usecase": "x", "metadata": {"n": "😀"}}
    raw = raw_json(body)
    assert b"\\ud83d\\ude00" in raw
    response = post_raw(api.admin_url("/usage-charges"), raw, api.admin_headers)
    assert response.status_code == 201, response.text
    items = agent.get("/wallet/transactions").json()["data"]["items"]
    assert any((t.get("metadata") or {}).get("n") == "😀" for t in items), items
    assert_reads_ok(api, agent)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/billing/info", {"name": "\udfff"}),
        ("/billing/info", {"address_line1": "x\ud800"}),
    ],
)
def test_lone_surrogates_are_refused_in_agent_bodies(api: Api, path: str, body: Any) -> None:
    agent = api.new_agent()
    response = post_raw(agent.api.agent_url(path), raw_json(body), agent.headers, method="PUT")
    assert_error(response, 422, "invalid_request")
    assert agent.get("/billing/info").json()["data"]["name"] is None
    assert_reads_ok(api, agent)


def test_surrogate_bytes_in_urls_are_not_a_server_error(api: Api) -> None:
    """A URL cannot carry a lone surrogate: its percent-encoded UTF-8 form decodes to U+FFFD."""
    agent = api.new_agent()
    for encoded in ("%ED%BF%BF", "%ED%A0%80", "%FF", "%C0%80"):
        status = requests.get(
            agent.api.agent_url(f"/payments/pi_{encoded}/status"), headers=agent.headers
        )
        assert 400 <= status.status_code < 500, status.text
        validate = requests.get(
            agent.api.agent_url(f"/wallet/coupons/validate?coupon_code=AB{encoded}"),
            headers=agent.headers,
        )
        assert validate.status_code < 500, validate.text
        page = requests.get(f"{api.base_url}/pay/cs_{encoded}")
        assert page.status_code == 404, page.text


def test_a_surrogate_stored_before_the_fix_does_not_break_reads(
    api: Api, services: Services
) -> None:
    """Rows written before requests refused lone surrogates still read back (as the escape)."""
    agent = api.new_agent()
    assert agent.fund(20).status_code == 200
    assert api.charge_usage(agent.account_id, 1).status_code == 201
    with services.database.transaction() as session:
        txn_id = session.scalars(
            select(LedgerTransaction.id).where(
                LedgerTransaction.account_id == agent.account_id,
                LedgerTransaction.kind == "usage_charge",
            )
        ).one()
        session.execute(
            update(LedgerTransaction)
            .where(LedgerTransaction.id == txn_id)
            .values(meta={"note": "\udfff"})
        )
    response = agent.get("/wallet/transactions")
    assert response.status_code == 200, response.text
    assert "\\udfff" in response.text
    assert_reads_ok(api, agent)


# --- Defect 12 (second half): a non-ASCII PDF link signature --------------------------------


def test_a_pdf_link_with_a_non_ascii_signature_is_403(api: Api) -> None:
    """No token is needed to try a link: any signature text is a 403, never a 500."""
    agent = api.new_agent()
    assert agent.fund(20).status_code == 200
    invoice = agent.get("/billing/invoices").json()["data"]["items"][0]["id"]
    url = agent.get(f"/billing/invoices/{invoice}/pdf").json()["data"]["url"]
    good = requests.get(url, timeout=30)
    assert good.status_code == 200 and good.content.startswith(b"%PDF")
    expires = re.search(r"expires=(\d+)", url)
    assert expires is not None
    for signature in ["é", "ü" * 64, "\u0663" * 64, "\u202e", "%ff", "\ufffd"]:
        for invoice_id in (invoice, "inv_\u00e9\u202e"):
            response = requests.get(
                f"{api.base_url}/invoices/{invoice_id}/pdf",
                params={"expires": expires.group(1), "signature": signature},
                timeout=30,
            )
            assert_error(response, 403, "invalid_signature")


# --- Defect 13: string amounts are plain ASCII decimals only ---------------------------------


ODD_STRING_AMOUNTS = [
    "1_0",
    "\u0661",  # Arabic-Indic one
    "\u0661\u0660",
    "\uff11\uff10",  # full-width 10
    " 1 ",
    "1 ",
    "\t1",
    "1e1",
    "1E1",
    "+1",
    "1.",
    ".5",
    "0x10",
    "1,5",
    "\u0661\u0660.\u0665",
    "Infinity",
    "NaN",
    "",
]


def test_odd_string_amounts_are_refused(api: Api) -> None:
    agent = api.new_agent()
    pm = agent.card()
    assert agent.fund(20).status_code == 200
    for amount in ODD_STRING_AMOUNTS:
        body = {"account_id": agent.account_id, "amount": amount, "usecase": "x"}
        error = assert_error(usage(api, body), 422, "invalid_request")
        assert error["details"]["field"] == "amount", (amount, error)
        fund = {"amount": amount + "0", "payment_method_id": pm}
        refused = post_raw(agent.api.agent_url("/wallet/fund"), raw_json(fund), agent.headers)
        assert_error(refused, 422, "invalid_request")
    assert agent.balance() == 20


CHARGED_AS = [
    ('"10"', Decimal(10)),
    ('"0.5"', Decimal("0.5")),
    ('"-0"', None),  # plain, but zero: below the minimum
    ("10", Decimal(10)),
    ("1e1", Decimal(10)),  # a JSON number in exponent form: exactly 10
    ("1E+1", Decimal(10)),
    ("2.50", Decimal("2.5")),
    ("25e-1", Decimal("2.5")),
]


def test_json_numbers_and_plain_decimal_strings_are_charged(api: Api) -> None:
    agent = api.new_agent()
    assert agent.fund(50).status_code == 200
    balance = Decimal(50)
    for literal, charged in CHARGED_AS:
        body = f'{{"account_id": "{agent.account_id}", "amount": {literal}, "usecase": "x"}}'
        response = post_raw(api.admin_url("/usage-charges"), body.encode(), api.admin_headers)
        if charged is None:
            assert_error(response, 422, "invalid_request")
            continue
        assert response.status_code == 201, (literal, response.text)
        assert decimal_json(response)["data"]["amount"] == charged
        balance -= charged
        assert agent.balance() == balance


def test_exponent_numbers_that_are_not_exact_cents_are_refused(api: Api) -> None:
    agent = api.new_agent()
    pm = agent.card()
    for literal in ("1e-3", "1e7", "1e400", "1e-400"):
        body = f'{{"amount": {literal}, "payment_method_id": "{pm}"}}'
        assert_error(
            post_raw(agent.api.agent_url("/wallet/fund"), body.encode(), agent.headers), 422
        )
    assert agent.balance() == 0


# --- Defect 14: one Idempotency-Key, one request, however its numbers are written ------------


def test_the_same_amount_written_differently_replays(api: Api) -> None:
    agent = api.new_agent()
    assert agent.fund(20).status_code == 200
    key = f"usage-{uuid.uuid4()}"
    spellings = [
        f'{{"account_id": "{agent.account_id}", "amount": 1, "usecase": "x"}}',
        f'{{"account_id": "{agent.account_id}", "amount": 1.0, "usecase": "x"}}',
        f'{{"usecase": "x", "amount": 1.00, "account_id": "{agent.account_id}"}}',
        f'{{ "amount" : 1e0 , "account_id" : "{agent.account_id}", "usecase" : "x" }}',
    ]
    headers = {**api.admin_headers, "Idempotency-Key": key}
    first = post_raw(api.admin_url("/usage-charges"), spellings[0].encode(), headers)
    assert first.status_code == 201, first.text
    for spelling in spellings[1:]:
        again = post_raw(api.admin_url("/usage-charges"), spelling.encode(), headers)
        assert again.status_code == 201, again.text
        assert again.headers["Idempotency-Replayed"] == "true"
        assert again.json()["data"]["id"] == first.json()["data"]["id"]
    assert agent.balance() == 19
    for different in (
        f'{{"account_id": "{agent.account_id}", "amount": 1.01, "usecase": "x"}}',
        f'{{"account_id": "{agent.account_id}", "amount": 10, "usecase": "x"}}',
        f'{{"account_id": "{agent.account_id}", "amount": 1, "usecase": "y"}}',
    ):
        refused = post_raw(api.admin_url("/usage-charges"), different.encode(), headers)
        assert_error(refused, 422, "idempotency_key_reused")
    assert agent.balance() == 19


def test_an_agent_retry_with_trailing_zeros_replays_the_top_up(api: Api) -> None:
    agent = api.new_agent()
    pm = agent.card()
    key = f"fund-{uuid.uuid4()}"
    headers = {**agent.headers, "Idempotency-Key": key}
    url = agent.api.agent_url("/wallet/fund")
    first = post_raw(url, f'{{"amount": 15, "payment_method_id": "{pm}"}}'.encode(), headers)
    assert first.status_code == 200, first.text
    again = post_raw(url, f'{{"payment_method_id": "{pm}", "amount": 15.00}}'.encode(), headers)
    assert again.status_code == 200, again.text
    assert again.headers["Idempotency-Replayed"] == "true"
    other = post_raw(url, f'{{"amount": 150, "payment_method_id": "{pm}"}}'.encode(), headers)
    assert_error(other, 422, "idempotency_key_reused")
    assert agent.balance() == 15


# --- Hidden characters in text people read: billing info, plans, seller ----------------------


HIDDEN = [
    "\u202e",  # right-to-left override
    "\u202d",
    "\u2066",  # left-to-right isolate
    "\u200f",  # right-to-left mark
    "\u061c",  # Arabic letter mark
    "\ufeff",  # BOM / zero-width no-break space
    "\u200b",  # zero-width space
    "\x07",
    "\x1b",
    "\n",
    "\t",
    "\r",
    "\x85",  # NEL
    "\x9b",  # C1 CSI
    "\u2028",  # line separator
    "\u2029",
    "\U000e0041",  # tag character
]


BILLING_TEXT_FIELDS = [
    "name",
    "address_line1",
    "address_line2",
    "address_city",
    "address_state",
    "address_postal_code",
    "tax_id",
    "tax_id_type",
]


def test_billing_info_refuses_control_and_bidi_characters(api: Api) -> None:
    agent = api.new_agent()
    for char in HIDDEN:
        for field in BILLING_TEXT_FIELDS:
            response = agent.put("/billing/info", {field: f"Acme{char}Corp"})
            error = assert_error(response, 422, "invalid_request")
            assert error["details"]["field"] == field
            assert f"U+{ord(char):04X}" in error["message"]
        email = agent.put("/billing/info", {"email": f"a{char}b@example.com"})
        assert_error(email, 422, "invalid_request")
    info = agent.get("/billing/info").json()["data"]
    assert all(value in (None, {}) or key == "address" for key, value in info.items()), info


def test_billing_info_keeps_real_names_in_any_script(api: Api) -> None:
    agent = api.new_agent()
    names = {
        "name": "Zoë Ångström-Łukasiewicz",
        "address_line1": "شارع الملك فهد ١٢",
        "address_city": "東京都",
        "address_state": "मुंबई",  # Devanagari with combining marks
        "address_line2": "\u06a9\u062a\u0627\u0628\u200c\u062e\u0627\u0646\u0647",  # Persian, ZWNJ
    }
    response = agent.put("/billing/info", names)
    assert response.status_code == 200, response.text
    info = agent.get("/billing/info").json()["data"]
    assert {k: info[k] for k in names} == names
    assert agent.fund(10).status_code == 200  # an invoice for this buyer renders
    assert_reads_ok(api, agent)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/plans", {"name": "Pro\u202e", "price": 1, "period": "month"}),
        ("/plans", {"name": "Pro", "price": 1, "period": "month", "features": ["a\x1b[31m"]}),
        ("/adjustments", {"amount": 1, "reason": "goodwill\u2066"}),
    ],
)
def test_operator_free_text_refuses_hidden_characters(api: Api, path: str, body: Any) -> None:
    agent = api.new_agent()
    if "reason" in body:
        body = {**body, "account_id": agent.account_id}
    assert_error(api.admin_post(path, body), 422, "invalid_request")
    assert agent.balance() == 0


def test_usage_charge_text_refuses_hidden_characters(api: Api) -> None:
    agent = api.new_agent()
    assert agent.fund(20).status_code == 200
    for field in ("usecase", "description"):
        body = {"account_id": agent.account_id, "amount": 1, "usecase": "x", field: "gpt\u202e"}
        assert_error(usage(api, body), 422, "invalid_request")
    assert agent.balance() == 20


def test_seller_details_refuse_hidden_characters(api: Api) -> None:
    before = api.admin_get("/invoice-settings").json()["data"]["seller"]
    for seller in ({"name": "Billfold\u202eInc"}, {"address": ["Main St\x00"]}):
        response = requests.put(
            api.admin_url("/invoice-settings"),
            data=raw_json({"seller": seller}),
            headers={**api.admin_headers, **JSON},
            timeout=30,
        )
        assert_error(response, 422, "invalid_request")
    assert api.admin_get("/invoice-settings").json()["data"]["seller"] == before


# --- Security headers and the hosted page's content policy ----------------------------------


def _payment_link(agent: Agent) -> dict[str, Any]:
    response = agent.post("/billing/payment-link", {"purpose": "fund", "amount": 25})
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def test_every_response_carries_the_security_headers(api: Api) -> None:
    agent = api.new_agent()
    link = _payment_link(agent)
    responses = {
        "page": requests.get(link["payment_url"], timeout=30),
        "closed page": requests.get(f"{api.base_url}/pay/cs_missing", timeout=30),
        "json": agent.get("/wallet/balance"),
        "error": agent.get("/wallet/nope"),
        "health": requests.get(f"{api.base_url}/healthz", timeout=30),
        "css": requests.get(f"{api.base_url}/checkout/static/checkout.css", timeout=30),
        "docs": requests.get(f"{api.base_url}/docs", timeout=30),
    }
    for name, response in responses.items():
        headers = response.headers
        assert headers["X-Frame-Options"] == "DENY", name
        assert headers["X-Content-Type-Options"] == "nosniff", name
        assert headers["Referrer-Policy"] == "no-referrer", name
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"], name
        assert headers["X-Request-Id"].startswith("req_"), name
    for name in ("page", "closed page"):
        policy = responses[name].headers["Content-Security-Policy"]
        assert "unsafe-inline" not in policy
        assert "script-src 'self'" in policy and "style-src 'self'" in policy
        assert "<script>" not in responses[name].text and "<style>" not in responses[name].text
    assert responses["css"].headers["Content-Type"].startswith("text/css")
    assert requests.get(f"{api.base_url}/checkout/static/pay.js", timeout=30).status_code == 200


def _wait_until(page: Any, condition: Any, timeout: float = 5) -> None:
    # Polled from here: the page's policy forbids eval, which wait_for_function relies on.
    # The page's own wait lets Playwright take in events (new frames) meanwhile.
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        page.wait_for_timeout(100)


def test_the_hosted_page_works_under_its_policy_and_cannot_be_framed(
    api: Api, browser: Any, backend: str
) -> None:
    agent = api.new_agent()
    link = _payment_link(agent)
    page = browser.new_page()
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    page.goto(link["payment_url"])
    # The stylesheet applies (the accent colour) and the script runs (the countdown ticks).
    color = page.evaluate("getComputedStyle(document.getElementById('pay-button')).backgroundColor")
    assert color == "rgb(36, 87, 214)"
    first = page.locator("#countdown").inner_text()
    _wait_until(page, lambda: page.locator("#countdown").inner_text() != first)
    page.get_by_label("Card number").fill("4242 4242 4242 4242")
    page.get_by_label("Expiry (MM/YY)").fill("12/34")
    page.get_by_label("CVC").fill("123")
    page.get_by_role("button", name="Pay $25.00").click()
    assert page.get_by_test_id("session-id").inner_text() == link["session_id"]
    page.get_by_role("button", name="Copy").click()
    _wait_until(page, lambda: page.locator("#copy-status").inner_text() != "")
    assert not [m for m in console if "Content Security Policy" in m], console

    # Another site framing the page is refused by the browser.
    framer = browser.new_page()
    framed: list[str] = []
    framer.on("console", lambda message: framed.append(message.text))
    framer.set_content(f'<iframe src="{link["payment_url"]}"></iframe>')
    framer.wait_for_timeout(1500)
    frame = framer.frames[-1] if len(framer.frames) > 1 else None
    shown = frame.evaluate("document.body ? document.body.innerText : ''") if frame else ""
    assert "Give this code" not in shown and "Payment received" not in shown
    assert any("frame-ancestors 'none'" in m and "blocked" in m for m in framed), framed
    framer.close()

    # The invoice PDF, sent with the same headers, still opens in the browser's viewer.
    invoice = agent.get("/billing/invoices").json()["data"]["items"][0]["id"]
    pdf_url = agent.get(f"/billing/invoices/{invoice}/pdf").json()["data"]["url"]
    opened = page.goto(pdf_url)
    assert opened is not None and opened.status == 200
    _wait_until(page, lambda: any(f.url.startswith("chrome-extension://") for f in page.frames))
    page.close()
    assert agent.balance() == 25


# --- Signed links stay out of the access log -------------------------------------------------


def test_billfold_serve_keeps_signed_link_queries_out_of_the_access_log(tmp_path: Path) -> None:
    sock = local_socket()
    port = sock.getsockname()[1]
    sock.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLFOLD_")}
    process = subprocess.Popen(
        [str(BILLFOLD), "serve", "--port", str(port), "--no-demo", "--no-worker"],
        cwd=tmp_path,
        env={**env, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.1)
        secret = "0123456789abcdef" * 4
        signed = requests.get(
            f"{base}/invoices/inv_logged/pdf?expires=99999999999&signature={secret}", timeout=10
        )
        assert signed.status_code == 403
        plain = requests.get(f"{base}/healthz?probe=visible", timeout=10)
        assert plain.status_code == 200
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=20)
    assert "/healthz?probe=visible" in output, output  # the access log is on
    assert "/invoices/inv_logged/pdf?[redacted]" in output, output
    assert secret not in output and "99999999999" not in output


# --- The invariant: hostile input is never stored --------------------------------------------


HOSTILE_CHARS = [
    "\udfff",
    "\ud800",
    "\ud83d",
    "\x00",
    "\x07",
    "\x1b",
    "\n",
    "\t",
    "\x7f",
    "\x85",
    "\u202e",
    "\u202a",
    "\u2067",
    "\u200e",
    "\u200b",
    "\u200d",
    "\ufeff",
    "\u2028",
    "\U000e0001",
    "\ufffd",
    "\uffff",
    "é",
    "ß",
    "名",
    "ش",
    "😀",
    "\u0301",
    " ",
    "a",
    "Z",
    "1",
    "@",
    ".",
    "-",
]
hostile_text = st.lists(
    st.one_of(st.sampled_from(HOSTILE_CHARS), st.characters(codec=None)),
    min_size=1,
    max_size=12,
).map("".join)

# (method, path, base body, text fields): every text field of the write endpoints an agent
# or the operator reaches, with the account's id filled in where the body names one.
WRITES: list[tuple[str, str, dict[str, Any], list[str]]] = [
    (
        "PUT",
        "agent:/billing/info",
        {},
        [
            "name",
            "email",
            "tax_id",
            "tax_id_type",
            "address_line1",
            "address_line2",
            "address_city",
            "address_state",
            "address_postal_code",
            "address_country",
        ],
    ),
    (
        "POST",
        "admin:/usage-charges",
        {"amount": "0.000001", "usecase": "fuzz"},
        ["usecase", "description", "metadata.value", "metadata.key"],
    ),
    ("POST", "admin:/adjustments", {"amount": "0.000001", "reason": "fuzz"}, ["reason"]),
    ("POST", "admin:/plans", {"name": "Fuzz", "price": 1, "period": "month"}, ["name", "features"]),
    ("POST", "admin:/coupons", {"kind": "credit", "amount": 1, "code": "C"}, ["code"]),
    (
        "POST",
        "admin:/accounts",
        {"email": "x@example.com", "password": "long enough"},
        ["email", "password"],
    ),
    (
        "PUT",
        "admin:/invoice-settings",
        {"seller": {}},
        ["seller.name", "seller.address", "seller.tax_id", "seller.email"],
    ),
    ("POST", "agent:/wallet/coupons/redeem", {"coupon_code": "C"}, ["coupon_code"]),
]


def _body_with(base: dict[str, Any], field: str, text: str, account_id: str) -> dict[str, Any]:
    body = json.loads(json.dumps(base))
    if field.startswith("metadata."):
        body["metadata"] = {text: 1} if field == "metadata.key" else {"note": text}
    elif field.startswith("seller."):
        name = field.split(".", 1)[1]
        body["seller"][name] = [text] if name == "address" else text
    elif field == "features":
        body["features"] = [text]
    else:
        body[field] = text
    if "usecase" in base or "reason" in base:
        body["account_id"] = account_id
    return body


# Fields whose text people read later (invoices, pages, listings): no hidden characters.
# Metadata and passwords are the client's own data: any text that can be stored.
FREE_FORM = {"metadata.value", "metadata.key", "password"}


def _hidden(text: str) -> list[str]:
    """The characters of `text` that no read-by-people field may store (test's own rule)."""
    return [
        f"U+{ord(char):04X}"
        for char in text
        if unicodedata.category(char) in {"Cc", "Cf", "Cs", "Zl", "Zp"}
        and char not in "\u200c\u200d"
    ]


def _unstorable(text: str) -> list[str]:
    return [
        f"U+{ord(char):04X}"
        for char in text
        if char == "\x00" or unicodedata.category(char) == "Cs"
    ]


def test_hostile_input_is_never_stored(api: Api, services: Services) -> None:
    agent = api.new_agent()
    assert agent.fund(20).status_code == 200
    seller_before = api.admin_get("/invoice-settings").json()["data"]["seller"]
    created_plans: list[int] = []
    outcomes = {"accepted": 0, "refused": 0}

    @settings(
        max_examples=40,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        write=st.sampled_from(WRITES),
        pick=st.integers(min_value=0, max_value=100),
        text=hostile_text,
    )
    def post_then_read(
        write: tuple[str, str, dict[str, Any], list[str]], pick: int, text: str
    ) -> None:
        method, target, base, fields = write
        field = fields[pick % len(fields)]
        side, path = target.split(":", 1)
        body = _body_with(base, field, text, agent.account_id)
        if side == "agent":
            url, headers = agent.api.agent_url(path), agent.headers
        else:
            url, headers = api.admin_url(path), api.admin_headers
        response = post_raw(url, raw_json(body), headers, method=method)
        assert response.status_code < 500, (path, field, repr(text), response.text)
        if 400 <= response.status_code < 500:
            assert_error(response, response.status_code)
            outcomes["refused"] += 1
        else:
            outcomes["accepted"] += 1
            # Accepted: then the text held nothing that may not be stored in that field.
            assert not _unstorable(text), (path, field, repr(text))
            if field not in FREE_FORM:
                assert not _hidden(text), (path, field, repr(text))
            if path == "/plans":
                created_plans.append(response.json()["data"]["id"])
            if path == "/billing/info":
                # A fresh invoice snapshots this buyer: it must render too.
                assert agent.fund(10).status_code == 200
        assert_reads_ok(api, agent)

    try:
        post_then_read()
        # Both sides of the rule were exercised: some text was stored, some refused.
        assert outcomes["accepted"] and outcomes["refused"], outcomes
    finally:
        for plan_id in created_plans:
            api.admin_post(f"/plans/{plan_id}/archive")
        requests.put(
            api.admin_url("/invoice-settings"),
            json={"seller": seller_before},
            headers=api.admin_headers,
            timeout=30,
        )
