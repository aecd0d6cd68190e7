"""Invoice PDFs (reportlab), and the signed, expiring links that serve them.

reportlab ships Bitstream Vera as TrueType; embedding it prints names such as
"Zoë Ødegård" and the € sign correctly without any font on the host.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
from datetime import datetime
from typing import Any

import pycountry
import reportlab
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen.canvas import Canvas

from billfold.invoices.models import Invoice, InvoiceLine
from billfold.invoices.service import REVERSE_CHARGE_NOTE, tax_percent
from billfold.money import format_money

_FONT_DIR = os.path.join(os.path.dirname(reportlab.__file__), "fonts")
pdfmetrics.registerFont(TTFont("Vera", os.path.join(_FONT_DIR, "Vera.ttf")))
pdfmetrics.registerFont(TTFont("Vera-Bold", os.path.join(_FONT_DIR, "VeraBd.ttf")))


def _date(value: datetime | None) -> str:
    return value.strftime("%d %b %Y") if value else ""


def _country_name(code: str | None) -> str | None:
    if not code:
        return None
    country = pycountry.countries.get(alpha_2=code)
    return country.name if country else code


def _party_lines(party: dict[str, Any], *, seller: bool) -> list[str]:
    if seller:
        lines = [party.get("name") or "", *(party.get("address") or [])]
        if party.get("country"):
            lines.append(_country_name(party["country"]) or "")
        if party.get("tax_id"):
            lines.append(f"Tax ID: {party['tax_id']}")
        if party.get("email"):
            lines.append(party["email"])
        return [line for line in lines if line]
    lines = [
        party.get("name") or party.get("account_email") or "",
        party.get("address_line1"),
        party.get("address_line2"),
        " ".join(p for p in (party.get("address_postal_code"), party.get("address_city")) if p),
        party.get("address_state"),
        _country_name(party.get("address_country")),
        f"{(party.get('tax_id_type') or '').upper().replace('_', ' ')}: {party['tax_id']}"
        if party.get("tax_id")
        else None,
        party.get("email") or party.get("account_email"),
    ]
    return [line for line in lines if line]


def render(invoice: Invoice, lines: list[InvoiceLine]) -> bytes:
    buffer = io.BytesIO()
    pdf = Canvas(buffer, pagesize=A4, pageCompression=1)
    width, height = A4
    title = "Credit note" if invoice.kind == "credit_note" else "Invoice"
    pdf.setTitle(f"{title} {invoice.number}")
    pdf.setAuthor(invoice.seller.get("name") or "Billfold")
    left, right = 20 * mm, width - 20 * mm
    y = height - 25 * mm

    pdf.setFont("Vera-Bold", 20)
    pdf.drawString(left, y, title)
    pdf.setFont("Vera", 10)
    meta = [
        ("Number", invoice.number or ""),
        ("Issued", _date(invoice.issued_at)),
        ("Paid", _date(invoice.paid_at)),
        ("Payment", invoice.payment_intent_id or ""),
    ]
    if invoice.kind == "credit_note" and invoice.reverses_invoice_id:
        meta.append(("Reverses", invoice.reverses_invoice_id))
    my = y
    for label, value in meta:
        pdf.setFont("Vera-Bold", 9)
        pdf.drawRightString(right - 62 * mm, my, label)
        pdf.setFont("Vera", 9)
        pdf.drawString(right - 60 * mm, my, value)
        my -= 5 * mm

    y -= 32 * mm
    for heading, party, x in (
        ("From", _party_lines(invoice.seller, seller=True), left),
        ("Bill to", _party_lines(invoice.buyer, seller=False), width / 2 + 5 * mm),
    ):
        pdf.setFont("Vera-Bold", 9)
        pdf.setFillColor(colors.HexColor("#5b6470"))
        pdf.drawString(x, y, heading.upper())
        pdf.setFillColor(colors.black)
        line_y = y - 5.5 * mm
        for index, text in enumerate(party):
            pdf.setFont("Vera-Bold" if index == 0 else "Vera", 10)
            pdf.drawString(x, line_y, text)
            line_y -= 5 * mm

    y -= 50 * mm
    pdf.setStrokeColor(colors.HexColor("#d5dae1"))
    pdf.setFont("Vera-Bold", 9)
    pdf.drawString(left, y, "Description")
    pdf.drawRightString(right - 55 * mm, y, "Qty")
    pdf.drawRightString(right - 28 * mm, y, "Unit price")
    pdf.drawRightString(right, y, "Amount")
    y -= 2.5 * mm
    pdf.line(left, y, right, y)
    pdf.setFont("Vera", 10)
    for line in lines:
        y -= 6 * mm
        pdf.drawString(left, y, line.description[:70])
        pdf.drawRightString(right - 55 * mm, y, str(line.quantity))
        pdf.drawRightString(
            right - 28 * mm, y, format_money(line.unit_amount_micros, invoice.currency)
        )
        pdf.drawRightString(right, y, format_money(line.amount_micros, invoice.currency))
        if line.period_start and line.period_end:
            y -= 4.5 * mm
            pdf.setFont("Vera", 8)
            pdf.drawString(
                left, y, f"Service period {_date(line.period_start)} to {_date(line.period_end)}"
            )
            pdf.setFont("Vera", 10)
    y -= 3 * mm
    pdf.line(left, y, right, y)

    rate = tax_percent(invoice.tax_rate_basis_points)
    totals: list[tuple[str, int]] = [
        ("Subtotal", invoice.subtotal_micros),
        (
            "Tax (reverse charge)" if invoice.reverse_charge else f"Tax ({rate}%)",
            invoice.tax_micros,
        ),
        ("Total", invoice.total_micros),
        ("Amount paid", invoice.amount_paid_micros),
        ("Amount due", invoice.total_micros - invoice.amount_paid_micros),
    ]
    for label, amount in totals:
        y -= 6 * mm
        bold = label in ("Total", "Amount due")
        pdf.setFont("Vera-Bold" if bold else "Vera", 10)
        pdf.drawRightString(right - 35 * mm, y, label)
        pdf.drawRightString(right, y, format_money(amount, invoice.currency))

    stamp = {
        "paid": ("REFUNDED" if invoice.kind == "credit_note" else "PAID", "#067647"),
        "void": ("VOID", "#5b6470"),
        "uncollectible": ("UNCOLLECTIBLE", "#b42318"),
    }.get(invoice.status)
    if stamp is not None:
        text, color = stamp
        pdf.saveState()
        pdf.setFillColor(colors.HexColor(color))
        pdf.setStrokeColor(colors.HexColor(color))
        pdf.setFont("Vera-Bold", 16)
        pdf.translate(left + 30 * mm, y + 8 * mm)
        pdf.rotate(12)
        width = pdf.stringWidth(text, "Vera-Bold", 16)
        pdf.roundRect(-4 * mm, -3 * mm, width + 8 * mm, 11 * mm, 2 * mm, stroke=1, fill=0)
        pdf.drawString(0, 0, text)
        pdf.restoreState()

    y -= 16 * mm
    pdf.setFont("Vera", 9)
    if invoice.reverse_charge:
        pdf.drawString(left, y, REVERSE_CHARGE_NOTE)
        y -= 5 * mm
    pdf.setFillColor(colors.HexColor("#5b6470"))
    pdf.drawString(left, 15 * mm, f"{invoice.seller.get('name') or ''} · {invoice.number}")
    pdf.showPage()
    pdf.save()
    return buffer.getvalue()


def link_signature(secret: bytes, invoice_id: str, expires: int) -> str:
    return hmac.new(secret, f"{invoice_id}:{expires}".encode(), hashlib.sha256).hexdigest()


def signature_valid(secret: bytes, invoice_id: str, expires: int, signature: str) -> bool:
    # compare_digest refuses non-ASCII str (TypeError): compare bytes, so any text the
    # query string carries is simply a wrong signature.
    expected = link_signature(secret, invoice_id, expires).encode()
    return hmac.compare_digest(expected, signature.encode("utf-8", "replace"))
