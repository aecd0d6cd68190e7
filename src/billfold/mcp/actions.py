"""The MCP tools, declared: each action of each tool is one agent-API request.

This table is the source of truth: the tool schemas are generated from it, the tool
handler runs it, and tests/test_mcp.py checks that it covers every agent route of the
OpenAPI document exactly once (auth login/logout/tokens aside).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TOOLS", "Action", "Field", "ToolSpec", "input_schema", "tool_by_name"]


@dataclass(frozen=True)
class Field:
    """A tool argument: its JSON schema and what it means."""

    schema: Mapping[str, Any]
    description: str


@dataclass(frozen=True)
class Action:
    """One agent-API request. `path` names its path parameters as `{name}`; `query` and
    `body` name the arguments sent there; `required` those the action cannot do without.
    `keyed`: the route takes an Idempotency-Key; the tool sends the caller's
    `idempotency_key`, or one of its own, and returns it. `send_nulls`: a null argument
    is sent as null (it clears the field) instead of being left out."""

    name: str
    method: str
    path: str
    description: str
    query: tuple[str, ...] = ()
    body: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    keyed: bool = False
    send_nulls: bool = False

    @property
    def path_params(self) -> tuple[str, ...]:
        return tuple(re.findall(r"{(\w+)}", self.path))

    @property
    def arguments(self) -> tuple[str, ...]:
        extra = ("idempotency_key",) if self.keyed else ()
        return (*self.path_params, *self.query, *self.body, *extra)


@dataclass(frozen=True)
class ToolSpec:
    name: str
    title: str
    description: str
    fields: Mapping[str, Field]
    actions: tuple[Action, ...]
    read_only: bool = False
    destructive: bool = True
    idempotent: bool = False
    # list-plans has a single action and so no `action` argument.
    has_action_argument: bool = True
    extra: Mapping[str, Any] = field(default_factory=dict)

    def action(self, name: str) -> Action | None:
        return next((a for a in self.actions if a.name == name), None)


def _string(description: str, **schema: Any) -> Field:
    return Field({"type": "string", **schema}, description)


def _integer(description: str, **schema: Any) -> Field:
    return Field({"type": "integer", **schema}, description)


def _number(description: str, **schema: Any) -> Field:
    return Field({"type": "number", **schema}, description)


def _boolean(description: str) -> Field:
    return Field({"type": "boolean"}, description)


def _nullable_string(description: str) -> Field:
    return Field({"type": ["string", "null"]}, description + " null clears it.")


IDEMPOTENCY_KEY = _string(
    "Idempotency-Key for this request (at most 255 characters). Leave it out and one is "
    "generated and returned as `idempotency_key`: to retry after a timeout or error, call "
    "again with the same arguments and that key, and the request takes effect at most once.",
    minLength=1,
    maxLength=255,
)
PAYMENT_METHOD_ID = _string(
    "A card PaymentMethod id (pm_…): tokenize the card at the `api_base` that "
    "agent-billing `stripe_config` names, with its publishable key. Optional where a "
    "default card is used otherwise.",
    maxLength=64,
)
LIMIT = _integer("Page size.", minimum=1, maximum=100)
OFFSET = _integer("Items to skip.", minimum=0)
SESSION_ID = _string("The checkout session id (cs_…) of a payment link.", maxLength=64)
SUBSCRIPTION_ID = _string("The subscription id (sub_…).", maxLength=64)


BILLING = ToolSpec(
    name="agent-billing",
    title="Billing: cards, payment links, billing info, invoices",
    description=(
        "The agent's billing: overview, card tokenization config, saved cards, setup "
        "intents, payment links for a human to pay, billing info, invoices and payments. "
        "Pick one `action`; give the arguments it names."
    ),
    fields={
        "payment_method_id": PAYMENT_METHOD_ID,
        "make_default": _boolean("add_payment_method: make the card the default one."),
        "purpose": Field(
            {"type": "string", "enum": ["fund", "subscribe"]},
            "create_payment_link: `fund` (credit the wallet with `amount`) or `subscribe` "
            "(start `plan_id`).",
        ),
        "amount": _number(
            "create_payment_link with purpose `fund`: amount in currency units (at least 10, "
            "at most 2 decimals)."
        ),
        "plan_id": _integer(
            "create_payment_link with purpose `subscribe`: the plan id.", minimum=1
        ),
        "invoice_id": _string("The invoice id (inv_…).", maxLength=64),
        "payment_intent_id": _string("The payment id (pi_…).", maxLength=64),
        "limit": LIMIT,
        "offset": OFFSET,
        "name": _nullable_string("update_billing_info: the buyer's name."),
        "email": _nullable_string("update_billing_info: billing email."),
        "tax_id": _nullable_string("update_billing_info: tax id, e.g. DE136695976."),
        "tax_id_type": _nullable_string("update_billing_info: Stripe tax id type, e.g. eu_vat."),
        "address_line1": _nullable_string("update_billing_info: address line 1."),
        "address_line2": _nullable_string("update_billing_info: address line 2."),
        "address_city": _nullable_string("update_billing_info: city."),
        "address_state": _nullable_string("update_billing_info: state or region."),
        "address_postal_code": _nullable_string("update_billing_info: postal code."),
        "address_country": _nullable_string("update_billing_info: ISO 3166 country code."),
        "idempotency_key": IDEMPOTENCY_KEY,
    },
    actions=(
        Action(
            "overview",
            "GET",
            "/billing/overview",
            "Wallet balance, auto-funding, default card, subscriptions and recent charges.",
        ),
        Action(
            "stripe_config",
            "GET",
            "/billing/stripe-config",
            "The publishable key and `api_base` where cards are tokenized (card numbers never "
            "reach Billfold).",
        ),
        Action("list_payment_methods", "GET", "/billing/payment-methods", "The saved cards."),
        Action(
            "add_payment_method",
            "POST",
            "/billing/payment-methods",
            "Save a tokenized card (payment_method_id) to the account.",
            body=("payment_method_id", "make_default"),
            required=("payment_method_id",),
            keyed=True,
        ),
        Action(
            "set_default_payment_method",
            "PUT",
            "/billing/payment-methods/{payment_method_id}/default",
            "Make a saved card the default one.",
            required=("payment_method_id",),
            keyed=True,
        ),
        Action(
            "remove_payment_method",
            "DELETE",
            "/billing/payment-methods/{payment_method_id}",
            "Remove a saved card.",
            required=("payment_method_id",),
            keyed=True,
        ),
        Action(
            "create_setup_intent",
            "POST",
            "/billing/setup-intent",
            "Save a card without charging it: {setup_intent_id, client_secret} to confirm at "
            "the tokenization api_base.",
            keyed=True,
        ),
        Action(
            "create_payment_link",
            "POST",
            "/billing/payment-link",
            "A payment_url for a human to pay (fund the wallet or subscribe); confirm later "
            "with its session_id (agent-wallet / agent-subscriptions confirm_checkout).",
            body=("purpose", "amount", "plan_id"),
            required=("purpose",),
            keyed=True,
        ),
        Action("get_billing_info", "GET", "/billing/info", "The buyer's billing info."),
        Action(
            "update_billing_info",
            "PUT",
            "/billing/info",
            "Update the billing-info fields given (partial; null clears a field).",
            body=(
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
            ),
            send_nulls=True,
        ),
        Action(
            "list_invoices",
            "GET",
            "/billing/invoices",
            "The account's invoices and credit notes, newest first.",
            query=("limit", "offset"),
        ),
        Action(
            "get_invoice",
            "GET",
            "/billing/invoices/{invoice_id}",
            "One invoice with its lines, seller and buyer.",
            required=("invoice_id",),
        ),
        Action(
            "get_invoice_pdf",
            "GET",
            "/billing/invoices/{invoice_id}/pdf",
            "A signed link to the invoice PDF, valid 15 minutes.",
            required=("invoice_id",),
        ),
        Action(
            "get_payment_status",
            "GET",
            "/payments/{payment_intent_id}/status",
            "The status of one card payment.",
            required=("payment_intent_id",),
        ),
    ),
)

WALLET = ToolSpec(
    name="agent-wallet",
    title="Wallet: balance, funding, withdrawals, auto-funding, coupons",
    description=(
        "The agent's prepaid wallet: balance and ledger, funding with a card or a paid "
        "payment link, withdrawals of purchased credit, auto-funding, coupons. Money "
        "actions take an `idempotency_key` (one is generated and returned when left out). "
        "Pick one `action`; give the arguments it names."
    ),
    fields={
        "amount": _number(
            "fund: amount in currency units, at least 10; withdraw: at least 0.01 (at most "
            "2 decimals)."
        ),
        "payment_method_id": PAYMENT_METHOD_ID,
        "session_id": SESSION_ID,
        "auto_charge_amount": _number(
            "enable_auto_funding: how much to charge per top-up (at least 5)."
        ),
        "charge_threshold": _number(
            "enable_auto_funding: top up when a debit leaves the balance under this (at least 1)."
        ),
        "coupon_code": _string("The coupon code.", maxLength=64),
        "purchase_amount": _number(
            "validate_coupon / redeem_coupon: the card purchase a bonus coupon applies to "
            "(at least 10)."
        ),
        "type": Field(
            {"type": "string", "enum": ["credit", "debit"]},
            "transactions: only credits or only debits.",
        ),
        "limit": LIMIT,
        "offset": OFFSET,
        "idempotency_key": IDEMPOTENCY_KEY,
    },
    actions=(
        Action(
            "balance",
            "GET",
            "/wallet/balance",
            "Balance, purchased/promotional split, auto-funding.",
        ),
        Action(
            "transactions",
            "GET",
            "/wallet/transactions",
            "The wallet's ledger entries, newest first (failed top-ups included).",
            query=("type", "limit", "offset"),
        ),
        Action(
            "fund",
            "POST",
            "/wallet/fund",
            "Charge a card (payment_method_id, or the default card) and credit the wallet.",
            body=("amount", "payment_method_id"),
            required=("amount",),
            keyed=True,
        ),
        Action(
            "confirm_checkout",
            "POST",
            "/wallet/confirm-checkout",
            "Report a paid `fund` payment link (session_id); the same answer every time.",
            body=("session_id",),
            required=("session_id",),
        ),
        Action(
            "withdraw",
            "POST",
            "/wallet/withdraw",
            "Refund purchased credit to the card it came from.",
            body=("amount",),
            required=("amount",),
            keyed=True,
        ),
        Action(
            "enable_auto_funding",
            "PUT",
            "/wallet/auto-funding",
            "Top up with the default card when the balance drops under charge_threshold.",
            body=("auto_charge_amount", "charge_threshold"),
            required=("auto_charge_amount", "charge_threshold"),
            keyed=True,
        ),
        Action(
            "disable_auto_funding",
            "DELETE",
            "/wallet/auto-funding",
            "Switch auto-funding off.",
            keyed=True,
        ),
        Action(
            "validate_coupon",
            "GET",
            "/wallet/coupons/validate",
            "Whether a coupon would apply: `valid`, and when false `error.code`.",
            query=("coupon_code", "purchase_amount"),
            required=("coupon_code",),
        ),
        Action(
            "redeem_coupon",
            "POST",
            "/wallet/coupons/redeem",
            "Redeem a coupon: credit coupons grant credit; bonus coupons need a card "
            "purchase (purchase_amount, payment_method_id or the default card).",
            body=("coupon_code", "payment_method_id", "purchase_amount"),
            required=("coupon_code",),
            keyed=True,
        ),
    ),
)

SUBSCRIPTIONS = ToolSpec(
    name="agent-subscriptions",
    title="Subscriptions: start, change, pause, cancel, pay",
    description=(
        "The agent's subscriptions. `create` with payment_method_id charges the first period "
        "now (headless); without it answers a checkout_url for a human, confirmed later with "
        "`confirm_checkout`. Plans: the list-plans tool. Money actions take an "
        "`idempotency_key` (one is generated and returned when left out). Pick one "
        "`action`; give the arguments it names."
    ),
    fields={
        "subscription_id": SUBSCRIPTION_ID,
        "plan_id": _integer("create: the plan to subscribe to (see list-plans).", minimum=1),
        "new_plan_id": _integer("change: the plan to move to.", minimum=1),
        "payment_method_id": PAYMENT_METHOD_ID,
        "success_url": _string(
            "create without payment_method_id: where the checkout page sends the human after "
            "paying.",
            format="uri",
            maxLength=2000,
        ),
        "at_period_end": _boolean(
            "cancel: true (default) stops renewals at the period end; false ends it now and "
            "credits the unused time to the wallet."
        ),
        "amount": _number("charge_amount: 5 to 10,000 currency units, at most 2 decimals."),
        "session_id": SESSION_ID,
        "idempotency_key": IDEMPOTENCY_KEY,
    },
    actions=(
        Action("list", "GET", "/subscriptions", "The account's subscriptions, newest first."),
        Action(
            "create",
            "POST",
            "/subscriptions",
            "Subscribe to plan_id: headless with payment_method_id, else a checkout link.",
            body=("plan_id", "payment_method_id", "success_url"),
            required=("plan_id",),
            keyed=True,
        ),
        Action(
            "get",
            "GET",
            "/subscriptions/{subscription_id}",
            "One subscription.",
            required=("subscription_id",),
        ),
        Action(
            "status",
            "GET",
            "/subscriptions/{subscription_id}/status",
            "One subscription's status (its pending payment settled first).",
            required=("subscription_id",),
        ),
        Action(
            "change",
            "PUT",
            "/subscriptions/{subscription_id}",
            "Move to new_plan_id (prorated).",
            body=("new_plan_id",),
            required=("subscription_id", "new_plan_id"),
            keyed=True,
        ),
        Action(
            "pause",
            "POST",
            "/subscriptions/{subscription_id}/pause",
            "Pause renewals.",
            required=("subscription_id",),
            keyed=True,
        ),
        Action(
            "resume",
            "POST",
            "/subscriptions/{subscription_id}/resume",
            "Resume a paused subscription.",
            required=("subscription_id",),
            keyed=True,
        ),
        Action(
            "reset_cycle",
            "POST",
            "/subscriptions/{subscription_id}/reset-cycle",
            "Start a new period now, charged in full less the unused part of this one.",
            required=("subscription_id",),
            keyed=True,
        ),
        Action(
            "cancel",
            "POST",
            "/subscriptions/{subscription_id}/cancel",
            "Cancel at the period end (default) or now (at_period_end false).",
            body=("at_period_end",),
            required=("subscription_id",),
            keyed=True,
        ),
        Action(
            "fix_payment",
            "POST",
            "/subscriptions/{subscription_id}/fix-payment",
            "Retry the failed payment now with the current default card.",
            required=("subscription_id",),
            keyed=True,
        ),
        Action(
            "charge_amount",
            "POST",
            "/subscriptions/charge-amount",
            "A one-off card charge credited to the wallet as purchased credit and invoiced.",
            body=("amount", "payment_method_id"),
            required=("amount",),
            keyed=True,
        ),
        Action(
            "confirm_checkout",
            "POST",
            "/subscriptions/confirm-checkout",
            "Report a paid subscription checkout (session_id); the same answer every time.",
            body=("session_id",),
            required=("session_id",),
        ),
    ),
)

PLANS = ToolSpec(
    name="list-plans",
    title="List subscription plans",
    description=(
        "The plans an agent can subscribe to (id, name, price, period, features, kind, "
        "included_credits) and the pay-as-you-go wallet option."
    ),
    fields={},
    actions=(Action("list", "GET", "/subscriptions/plans", "The plan catalogue."),),
    read_only=True,
    destructive=False,
    idempotent=True,
    has_action_argument=False,
)

TOOLS: tuple[ToolSpec, ...] = (BILLING, WALLET, SUBSCRIPTIONS, PLANS)


def tool_by_name(name: str) -> ToolSpec | None:
    return next((t for t in TOOLS if t.name == name), None)


def _action_line(action: Action) -> str:
    needs = ", ".join(action.required) or "nothing"
    optional = [a for a in action.arguments if a not in action.required]
    more = f"; optional {', '.join(optional)}" if optional else ""
    return f"- {action.name}: {action.description} (needs {needs}{more})"


def input_schema(tool: ToolSpec) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    if tool.has_action_argument:
        properties["action"] = {
            "type": "string",
            "enum": [a.name for a in tool.actions],
            "description": "What to do:\n" + "\n".join(_action_line(a) for a in tool.actions),
        }
    for name, spec in tool.fields.items():
        properties[name] = {**spec.schema, "description": spec.description}
    return {
        "type": "object",
        "properties": properties,
        "required": ["action"] if tool.has_action_argument else [],
        "additionalProperties": False,
    }


def _check_table() -> None:
    """Every argument an action names is a field of its tool (at import: a typo fails fast)."""
    for tool in TOOLS:
        for action in tool.actions:
            unknown = set(action.arguments) - set(tool.fields)
            assert not unknown, f"{tool.name} {action.name}: no field {sorted(unknown)}"
            assert set(action.required) <= set(action.arguments), (tool.name, action.name)


_check_table()
