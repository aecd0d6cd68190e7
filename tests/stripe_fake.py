"""localstripe, started for the tests, with what it lacks of Stripe's documented behaviour.

`python -m tests.stripe_fake --port N` runs localstripe's own server (PyPI `localstripe`,
in memory) with these additions, and nothing else changed:

- **Idempotency-Key**: a POST carrying one is answered once and replayed after (Stripe's
  documented semantics; localstripe ignores the header), so retries can be tested.
- **Test cards as Stripe documents them**: the decline `code`/`decline_code` of each test
  card (`billfold.processors.cards.TEST_CARD_DECLINES`, the same table as the sandbox's),
  cards refused on attach also refused on charge, a card error naming its
  `payment_intent`; each card's brand (localstripe says visa to every number);
  `description`/`setup_future_usage` accepted on PaymentIntents; the
  PaymentIntent list filtered by `customer` and `created[gte]`; publishable-key
  tokenization (`POST /v1/payment_methods`, setup intent confirms) as Stripe.js does it,
  with the account's publishable key only (`--publishable-key`, default
  pk_test_billfold; another pk_… is a 401); a card refused on a SetupIntent confirm is
  the test card's `card_error` naming the `setup_intent`, back to
  `requires_payment_method`.
- **Checkout Sessions** (localstripe has none): a minimal stand-in for
  `POST /v1/checkout/sessions`, `GET /v1/checkout/sessions/{id}` and `…/expire`, plus
  `POST /_test/checkout/{id}/pay` (form: card[number] …) playing the human who pays on
  Stripe's page: it makes a real localstripe PaymentMethod and PaymentIntent and sends
  `checkout.session.completed` to the registered webhooks.
- **Faults and a request log** for the tests: `POST /_test/faults` ({method, path,
  status | delay, phase: before | after, times}) answers a matching request with that
  status (before or after localstripe handled it) or holds it for `delay` seconds after
  handling it; `GET /_test/requests` lists (method, path, Idempotency-Key) as received.

The store is not written to disk (localstripe pickles it to one shared /tmp file on every
write), so each test server has its own.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import re
import socket
import time
from typing import Any

from aiohttp import web
from localstripe import resources, server
from localstripe.errors import UserError
from localstripe.resources import PaymentIntent, PaymentMethod, StripeObject

from billfold.processors.cards import TEST_CARD_DECLINES, brand_of

# --- the store stays in memory ----------------------------------------------------------

resources.Store.dump_to_disk = lambda self: None  # type: ignore[method-assign]
resources.Store.try_load_from_disk = lambda self: None  # type: ignore[method-assign]


# --- test cards -------------------------------------------------------------------------


def _decline(pm: Any, *, on_attach: bool) -> Any:
    if pm.type != "card":
        return None
    decline = TEST_CARD_DECLINES.get(pm._card_number)
    if decline is None or decline.off_session_only:
        return None
    return decline if (decline.on_attach or not on_attach) else None


def _card_error(decline: Any, **extra: Any) -> UserError:
    error = UserError(
        402,
        decline.message,
        {"code": decline.code, "decline_code": decline.decline_code, **extra},
    )
    error.body["error"]["type"] = "card_error"
    return error


_original_pm_init = PaymentMethod.__init__


def _pm_init(self: Any, *args: Any, **kwargs: Any) -> None:
    # Stripe names the card's brand (localstripe calls every card a visa).
    _original_pm_init(self, *args, **kwargs)
    if self.type == "card" and self._card_number.isdigit():
        self.card["brand"] = brand_of(self._card_number)


PaymentMethod.__init__ = _pm_init  # type: ignore[method-assign]
PaymentMethod._attaching_is_declined = lambda self: _decline(self, on_attach=True) is not None
PaymentMethod._charging_is_declined = lambda self: _decline(self, on_attach=False) is not None
_original_attach = PaymentMethod._api_attach.__func__  # type: ignore[attr-defined]


def _attach(cls: Any, id: str, customer: str | None = None, **kwargs: Any) -> Any:
    decline = _decline(cls._api_retrieve(id), on_attach=True)
    if decline is not None:
        raise _card_error(decline)
    pm = cls._api_retrieve(id)
    if pm.customer is not None and pm.customer != customer:
        raise UserError(
            400,
            "The payment method you provided has already been attached to a customer.",
            {"code": "payment_method_unexpected_state"},
        )
    return _original_attach(cls, id, customer=customer, **kwargs)


PaymentMethod._api_attach = classmethod(_attach)  # type: ignore[assignment]
server.extra_apis = resources.extra_apis


def _set_auth_failure(self: Any) -> None:
    decline = _decline(PaymentMethod._api_retrieve(self.payment_method), on_attach=False)
    self.status = "failed"
    self.failure_code = decline.code if decline else "card_declined"
    self.failure_message = decline.message if decline else "Your card was declined."
    self._decline_code = decline.decline_code if decline else "generic_decline"


resources.Charge._set_auth_failure = _set_auth_failure


def _report_failure(self: Any) -> None:
    resources.schedule_webhook(resources.Event("payment_intent.payment_failed", self))
    charge = self.latest_charge
    raise _card_error(
        type(
            "D",
            (),
            {
                "code": charge.failure_code,
                "decline_code": getattr(charge, "_decline_code", "generic_decline"),
                "message": charge.failure_message,
            },
        ),
        charge=charge.id,
        payment_intent=self._export(),
    )


PaymentIntent._report_failure = _report_failure
_original_last_payment_error = PaymentIntent.last_payment_error.fget  # type: ignore[attr-defined]


def _last_payment_error(self: Any) -> Any:
    error = _original_last_payment_error(self)
    if error and self.latest_charge is not None:
        error["decline_code"] = getattr(self.latest_charge, "_decline_code", None)
    return error


PaymentIntent.last_payment_error = property(_last_payment_error)  # type: ignore[assignment]

_original_pi_init = PaymentIntent.__init__


def _pi_init(self: Any, description: str | None = None, setup_future_usage: Any = None, **kw: Any):
    _original_pi_init(self, **kw)
    self.description = description
    self.setup_future_usage = setup_future_usage


PaymentIntent.__init__ = _pi_init  # type: ignore[method-assign]
_original_success = PaymentIntent._on_success


def _on_success(self: Any) -> None:
    # An off-session charge with setup_future_usage attaches the card, as Stripe does.
    if self.setup_future_usage and self.customer:
        PaymentMethod._api_retrieve(self.payment_method).customer = self.customer
    _original_success(self)


PaymentIntent._on_success = _on_success


def _pi_list(
    cls: Any,
    url: str,
    customer: str | None = None,
    created: Any = None,
    limit: Any = None,
    starting_after: str | None = None,
) -> Any:
    li = StripeObject._api_list_all.__func__(cls, url, limit=limit, starting_after=starting_after)
    if customer:
        li._list = [pi for pi in li._list if pi.customer == customer]
    if isinstance(created, dict) and "gte" in created:
        li._list = [pi for pi in li._list if pi.created >= int(created["gte"])]
    li._list.sort(key=lambda pi: pi.created, reverse=True)
    return li


PaymentIntent._api_list_all = classmethod(_pi_list)  # type: ignore[assignment]

_original_setup_attach_pm = resources.SetupIntent._attach_pm


def _setup_attach_pm(self: Any, pm: Any) -> None:
    # Stripe's answer to a card refused while confirming a SetupIntent: the test card's
    # card_error naming the intent, which is back to requires_payment_method.
    decline = _decline(pm, on_attach=True)
    if decline is None:
        _original_setup_attach_pm(self, pm)
        return
    self.payment_method = pm.id
    self.status = "requires_payment_method"
    self.next_action = None
    self.last_setup_error = {
        "type": "card_error",
        "code": decline.code,
        "decline_code": decline.decline_code,
        "message": decline.message,
    }
    raise _card_error(decline, setup_intent=self._export())


resources.SetupIntent._attach_pm = _setup_attach_pm

# Stripe.js tokenizes with the publishable key as basic-auth user: the account's own
# publishable key (`--publishable-key`); any other key is refused (401) as Stripe does.
_PUBLISHABLE_PATHS = (r"^/v1/payment_methods$", r"^/v1/setup_intents/\w+/confirm$")
PUBLISHABLE_KEYS = {"pk_test_billfold"}
_original_get_api_key = server.get_api_key


def _get_api_key(request: web.Request) -> str | None:
    key = _original_get_api_key(request)
    if key is None and request.method == "POST":
        header = request.headers.get("Authorization", "").split(" ")
        if len(header) == 2 and header[0] == "Basic":
            user = base64.b64decode(header[1]).decode().split(":")[0]
            publishable = any(re.match(p, request.path) for p in _PUBLISHABLE_PATHS)
            if user in PUBLISHABLE_KEYS and publishable:
                return user
    return key


server.get_api_key = _get_api_key


# --- Checkout Sessions (stand-in) -----------------------------------------------------


class CheckoutSession(StripeObject):
    object = "checkout.session"
    _id_prefix = "cs_test_"

    def __init__(self, **data: Any) -> None:
        super().__init__()
        line = data["line_items"][0]
        self.mode = data.get("mode", "payment")
        self.customer = data.get("customer")
        self.amount_total = int(line["price_data"]["unit_amount"]) * int(line.get("quantity", 1))
        self.currency = line["price_data"]["currency"]
        self.metadata = data.get("metadata") or {}
        self.success_url = data["success_url"]
        self.cancel_url = data.get("cancel_url")
        self.expires_at = int(data.get("expires_at") or time.time() + 86400)
        self.status = "open"
        self.payment_status = "unpaid"
        self.payment_intent = None
        self.url = f"{PUBLIC_URL}/checkout/{self.id}"
        self._intent_data = data.get("payment_intent_data") or {}


async def create_session(request: web.Request) -> web.Response:
    data = await server.get_post_data(request) or {}
    return server.json_response(CheckoutSession(**data)._export())


def _session(request: web.Request) -> CheckoutSession:
    obj: CheckoutSession = CheckoutSession._api_retrieve(request.match_info["id"])
    if obj.status == "open" and obj.expires_at <= time.time():
        obj.status = "expired"
    return obj


async def retrieve_session(request: web.Request) -> web.Response:
    return server.json_response(_session(request)._export())


async def expire_session(request: web.Request) -> web.Response:
    obj = _session(request)
    if obj.status == "open":
        obj.status = "expired"
    return server.json_response(obj._export())


async def pay_session(request: web.Request) -> web.Response:
    """The human pays on the hosted page: a card PaymentMethod, saved to the customer, and
    a PaymentIntent confirmed on session."""
    obj = _session(request)
    if obj.status != "open":
        raise UserError(400, f"This Checkout Session is {obj.status}.")
    card = dict((await server.get_post_data(request))["card"])
    pm = PaymentMethod(type="card", card=card)
    decline = _decline(pm, on_attach=True)
    if decline is not None:
        raise _card_error(decline)
    pm.customer = obj.customer
    intent = PaymentIntent(
        amount=obj.amount_total,
        currency=obj.currency,
        customer=obj.customer,
        payment_method=pm.id,
        metadata=obj._intent_data.get("metadata") or {},
        description=obj._intent_data.get("description"),
        setup_future_usage=obj._intent_data.get("setup_future_usage"),
    )
    intent._create_charge(on_failure_now=intent._report_failure)
    obj.status = "complete"
    obj.payment_status = "paid"
    obj.payment_intent = intent.id
    resources.schedule_webhook(resources.Event("checkout.session.completed", obj))
    return server.json_response(obj._export())


# --- idempotency, faults and the request log ---------------------------------------------

REQUESTS: list[dict[str, Any]] = []
FAULTS: list[dict[str, Any]] = []
_REPLAYS: dict[str, tuple[int, bytes]] = {}
PUBLIC_URL = ""


def _fault(request: web.Request, phase: str) -> dict[str, Any] | None:
    for fault in FAULTS:
        if (
            fault.get("phase", "before") == phase
            and fault.get("method", request.method) == request.method
            and re.search(fault["path"], request.path)
            and fault.get("times", 1) > 0
        ):
            fault["times"] = fault.get("times", 1) - 1
            return fault
    return None


def _fault_response(fault: dict[str, Any]) -> web.Response:
    status = int(fault.get("status", 500))
    body = {"error": {"type": "api_error", "message": f"Injected fault ({status})."}}
    if status == 429:
        body["error"]["type"] = "invalid_request_error"
        body["error"]["code"] = "rate_limit"
    return server.json_response(body, status=status)


@web.middleware
async def faults_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    if request.path.startswith("/_test/"):
        return await handler(request)
    REQUESTS.append(
        {
            "method": request.method,
            "path": request.path,
            "idempotency_key": request.headers.get("Idempotency-Key"),
        }
    )
    fault = _fault(request, "before")
    if fault is not None:
        return _fault_response(fault)
    response = await handler(request)
    fault = _fault(request, "after")
    if fault is not None:
        if fault.get("delay"):
            await asyncio.sleep(float(fault["delay"]))
        else:
            return _fault_response(fault)
    return response


@web.middleware
async def idempotency_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    key = request.headers.get("Idempotency-Key")
    if request.method != "POST" or not key:
        return await handler(request)
    if key in _REPLAYS:
        status, body = _REPLAYS[key]
        return web.Response(
            body=body,
            status=status,
            content_type="application/json",
            headers={"Idempotent-Replayed": "true"},
        )
    try:
        response = await handler(request)
    except UserError as exc:
        response = exc.to_response()
    if response.status < 500 and isinstance(response, web.Response) and response.body:
        _REPLAYS[key] = (response.status, bytes(response.body))  # type: ignore[arg-type]
    return response


async def set_faults(request: web.Request) -> web.Response:
    FAULTS[:] = list(await request.json())
    return web.Response()


async def list_requests(request: web.Request) -> web.Response:
    return server.json_response(REQUESTS)


def main() -> None:
    global PUBLIC_URL
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--publishable-key",
        action="append",
        help="the account's publishable key (repeatable; default pk_test_billfold)",
    )
    args = parser.parse_args()
    PUBLIC_URL = f"http://127.0.0.1:{args.port}"
    if args.publishable_key:
        PUBLISHABLE_KEYS.clear()
        PUBLISHABLE_KEYS.update(args.publishable_key)
    app = server.app
    app.middlewares.insert(0, faults_middleware)
    app.middlewares.insert(1, idempotency_middleware)
    # localstripe's error middleware must see a UserError before idempotency stores it.
    app.router.add_post("/v1/checkout/sessions", create_session)
    app.router.add_get("/v1/checkout/sessions/{id}", retrieve_session)
    app.router.add_post("/v1/checkout/sessions/{id}/expire", expire_session)
    app.router.add_post("/_test/checkout/{id}/pay", pay_session)
    app.router.add_post("/_test/faults", set_faults)
    app.router.add_get("/_test/requests", list_requests)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    web.run_app(app, sock=sock, access_log=None, print=None)


if __name__ == "__main__":
    main()
