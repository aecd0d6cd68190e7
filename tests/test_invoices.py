"""Invoices and credit notes: numbering, tax, buyer snapshots, PDFs and their links."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import requests
from pypdf import PdfReader
from sqlalchemy import select

from billfold.api.routers.invoices import _link_secret
from billfold.clock import now
from billfold.invoices import pdf as invoice_pdf
from billfold.invoices.models import Invoice
from billfold.invoices.service import invoice_card_payment
from billfold.services import Services
from tests.conftest import require_service
from tests.helpers import Agent, Api, assert_error, decimal_json

# Run on both processors (tests/conftest.py `pytest_generate_tests`).
PROCESSORS = ("sandbox", "stripe")

NUMBER = re.compile(r"^[A-Z0-9]{1,10}-\d{4}-(\d{6})$")


def _agent_in(api: Api, currency: str = "USD") -> Agent:
    email = f"inv-{uuid.uuid4().hex[:10]}@example.com"
    created = api.admin_post(
        "/accounts", {"email": email, "password": "long enough", "currency": currency}
    )
    assert created.status_code == 201, created.text
    token = api.admin_post(f"/accounts/{created.json()['data']['id']}/tokens").json()["data"]
    return Agent(api, token["account_id"], email, "long enough", token["access_token"])


def _invoices(agent: Agent) -> list[dict]:
    response = agent.get("/billing/invoices", params={"limit": 200})
    assert response.status_code == 200, response.text
    return decimal_json(response)["data"]["items"]


def _pdf_text(agent: Agent, invoice_id: str) -> tuple[str, bytes]:
    link = agent.get(f"/billing/invoices/{invoice_id}/pdf").json()["data"]
    response = requests.get(link["url"])  # no token: a human opens it
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/pdf"
    text = "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(response.content)).pages)
    return text, response.content


@pytest.fixture(autouse=True)
def default_settings(api: Api) -> None:
    """Operator settings are global: each test starts from known ones (the fuzzer moves them)."""
    response = api.session.put(
        api.admin_url("/invoice-settings"),
        json={
            "seller": {"name": "Billfold operator", "address": [], "country": None},
            "invoice_prefix": "BF",
            "credit_note_prefix": "CN",
            "tax_rates": {},
        },
        headers=api.admin_headers,
    )
    assert response.status_code == 200, response.text


@pytest.fixture
def seller(api: Api) -> None:
    response = api.session.put(
        api.admin_url("/invoice-settings"),
        json={
            "seller": {
                "name": "Agentworks GmbH",
                "address": ["Friedrichstraße 1", "10117 Berlin"],
                "country": "DE",
                "tax_id": "DE123456789",
            },
            "tax_rates": {"DE": "19", "AT": 20},
        },
        headers=api.admin_headers,
    )
    assert response.status_code == 200, response.text


def test_every_card_charge_is_invoiced(api: Api) -> None:
    agent = api.new_agent()
    payment = agent.fund(50).json()["data"]["payment_intent_id"]
    [invoice] = _invoices(agent)
    assert (invoice["object"], invoice["status"], invoice["total"], invoice["amount_paid"]) == (
        "invoice",
        "paid",
        50,
        50,
    )
    assert invoice["payment_intent_id"] == payment
    assert re.match(r"^BF-\d{4}-\d{6}$", invoice["number"])
    detail = decimal_json(agent.get(f"/billing/invoices/{invoice['id']}"))["data"]
    assert [(line["description"], line["amount"]) for line in detail["lines"]] == [
        ("Prepaid wallet credit", 50)
    ]
    assert (detail["subtotal"], detail["tax"], detail["reverse_charge"]) == (50, 0, False)


def test_taxed_invoice_pdf_and_buyer_snapshot(
    api: Api, seller: None, artifacts: Path, backend: str
) -> None:
    agent = _agent_in(api, "EUR")
    info = {
        "name": "Zoë Ødegård",
        "address_line1": "Karl-Marx-Allee 3",
        "address_city": "Berlin",
        "address_postal_code": "10178",
        "address_country": "DE",
    }
    assert agent.put("/billing/info", info).status_code == 200
    assert agent.fund("59.50").status_code == 200
    [invoice] = _invoices(agent)
    assert (invoice["subtotal"], invoice["tax"], invoice["total"]) == (
        50,
        Decimal("9.5"),
        Decimal("59.5"),
    )
    agent.put("/billing/info", {"name": "Someone Else"})  # later edits never change an invoice
    detail = agent.get(f"/billing/invoices/{invoice['id']}").json()["data"]
    assert detail["buyer"]["name"] == "Zoë Ødegård"
    assert detail["tax_rate"] == 19

    text, body = _pdf_text(agent, invoice["id"])
    for expected in (
        invoice["number"],
        "Zoë Ødegård",
        "Agentworks GmbH",
        "€59.50",
        "€50.00",
        "€9.50",
        "Tax (19%)",
        "PAID",
    ):
        assert expected in text, (expected, text)
    if shutil.which("pdftoppm") is None:
        require_service("pdftoppm is not installed (apt-get install poppler-utils)")
    source = artifacts / f"invoice-{backend}.pdf"
    source.write_bytes(body)
    subprocess.run(
        [
            "pdftoppm",
            "-png",
            "-r",
            "80",
            "-singlefile",
            str(source),
            str(artifacts / f"invoice-{backend}"),
        ],
        check=True,
    )
    assert (artifacts / f"invoice-{backend}.png").stat().st_size > 10_000


def test_reverse_charge_for_an_eu_business_elsewhere(api: Api, seller: None) -> None:
    agent = _agent_in(api, "EUR")
    agent.put(
        "/billing/info",
        {
            "name": "Société Agent SAS",
            "address_country": "FR",
            "tax_id": "FRAC123456782",
            "tax_id_type": "eu_vat",
        },
    )
    agent.fund(100)
    [invoice] = _invoices(agent)
    assert (invoice["tax"], invoice["total"]) == (0, 100)
    detail = agent.get(f"/billing/invoices/{invoice['id']}").json()["data"]
    assert detail["reverse_charge"] is True
    text, _ = _pdf_text(agent, invoice["id"])
    assert "Reverse charge" in text
    assert "Article 196" in text
    assert "Société Agent SAS" in text


def test_refund_gets_a_credit_note(api: Api) -> None:
    agent = api.new_agent()
    agent.fund(30)
    assert agent.post("/wallet/withdraw", {"amount": 12}).status_code == 200
    items = _invoices(agent)
    assert [i["object"] for i in items] == ["credit_note", "invoice"]
    note, original = items
    assert (note["total"], note["reverses_invoice_id"]) == (-12, original["id"])
    assert note["number"].startswith("CN-")
    text, _ = _pdf_text(agent, note["id"])
    assert "Credit note" in text
    assert "-$12.00" in text


def test_links_are_signed_and_expire(api: Api, services: Services) -> None:
    agent = api.new_agent()
    agent.fund(10)
    [invoice] = _invoices(agent)
    link = agent.get(f"/billing/invoices/{invoice['id']}/pdf").json()["data"]
    assert requests.get(link["url"]).status_code == 200
    tampered = link["url"].replace("signature=", "signature=0")
    assert_error(requests.get(tampered), 403, "invalid_signature")
    other = api.new_agent()
    other.fund(10)
    [theirs] = _invoices(other)
    swapped = link["url"].replace(invoice["id"], theirs["id"])
    assert_error(requests.get(swapped), 403, "invalid_signature")
    past = int((now() - timedelta(minutes=1)).timestamp())
    signature = invoice_pdf.link_signature(_link_secret(services), invoice["id"], past)
    expired = f"{api.base_url}/invoices/{invoice['id']}/pdf?expires={past}&signature={signature}"
    assert_error(requests.get(expired), 410, "link_expired")


def test_another_accounts_invoice_is_404(api: Api) -> None:
    owner, intruder = api.new_agent(), api.new_agent()
    owner.fund(10)
    [invoice] = _invoices(owner)
    assert_error(intruder.get(f"/billing/invoices/{invoice['id']}"), 404, "invoice_not_found")
    assert_error(intruder.get(f"/billing/invoices/{invoice['id']}/pdf"), 404)
    assert _invoices(intruder) == []


def test_numbers_are_gapless_under_concurrency_and_rollbacks(api: Api, services: Services) -> None:
    agents = [api.new_agent() for _ in range(4)]
    cards = {a.account_id: a.card() for a in agents}
    for agent in agents:  # save each card so later fundings use the default
        assert (
            agent.post(
                "/billing/payment-methods", {"payment_method_id": cards[agent.account_id]}
            ).status_code
            == 201
        )

    class Abort(Exception):
        pass

    def rolled_back(index: int) -> None:
        try:
            with services.database.transaction() as session:
                invoice_card_payment(
                    session,
                    account_id=agents[0].account_id,
                    payment_intent_id=f"pi_rollback_{uuid.uuid4().hex}",
                    amount_micros=10_000_000,
                    currency="USD",
                    line_kind="wallet_funding",
                    description="never issued",
                )
                raise Abort
        except Abort:
            pass

    def fund(index: int) -> int:
        if index % 6 == 5:
            rolled_back(index)
            return 0
        return agents[index % 4].post("/wallet/fund", {"amount": 10}).status_code

    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(fund, range(120)))
    assert statuses.count(200) == 100
    with services.database.read() as session:
        numbers = [
            int(NUMBER.match(n).group(1))  # type: ignore[union-attr]
            for n in session.scalars(select(Invoice.number).where(Invoice.kind == "invoice"))
        ]
    assert len(numbers) == len(set(numbers))
    assert sorted(numbers) == list(range(1, len(numbers) + 1))  # no gap in the whole series
    assert sum(len(_invoices(agent)) for agent in agents) == 100


def test_invoice_settings_keep_their_prefixes(api: Api) -> None:
    response = api.session.put(
        api.admin_url("/invoice-settings"),
        json={"invoice_prefix": None, "credit_note_prefix": None},
        headers=api.admin_headers,
    )
    assert response.status_code == 200
    assert response.json()["data"]["invoice_prefix"] == "BF"
    bad = api.session.put(
        api.admin_url("/invoice-settings"),
        json={"tax_rates": {"XX": 5}},
        headers=api.admin_headers,
    )
    assert_error(bad, 422, "invalid_request")
