"""Webhook URLs cannot reach internal addresses in any IPv6 disguise, at registration or at
connect time; malformed URLs are 4xx; a slow receiver times out; secrets are shown once."""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from billfold.api.app import create_app
from billfold.application.jobs import Worker
from billfold.services import Services
from billfold.webhooks import egress
from billfold.webhooks import service as webhooks
from tests.conftest import ADMIN_KEY, Receiver
from tests.helpers import Api, assert_error

# Internal IPv4 addresses (metadata service, loopback, private) hidden in IPv6 forms.
DISGUISED_INTERNAL = [
    "64:ff9b::a9fe:a9fe",  # NAT64 well-known prefix → 169.254.169.254
    "64:ff9b::7f00:1",  # NAT64 → 127.0.0.1
    "64:ff9b::a00:5",  # NAT64 → 10.0.0.5
    "64:ff9b:1::a9fe:a9fe",  # NAT64 local-use prefix
    "64:ff9b:1:ffff::808:808",  # local-use, whatever it carries
    "2002:a9fe:a9fe::",  # 6to4 → 169.254.169.254
    "2002:7f00:1::1",  # 6to4 → 127.0.0.1
    "2002:c0a8:101::",  # 6to4 → 192.168.1.1
    "2001:0:4136:e378:8000:63bf:5601:5601",  # Teredo, client (obfuscated) 169.254.169.254
    "::ffff:169.254.169.254",  # IPv4-mapped
    "::ffff:127.0.0.1",
    "::a9fe:a9fe",  # IPv4-compatible
    "::7f00:1",
    "::1",
    "::",
    "fe80::1",
    "fd00::1",
]
PUBLIC = [
    "8.8.8.8",
    "2606:4700:4700::1111",
    "64:ff9b::808:808",  # NAT64 of a public IPv4 address: a real IPv6-only deployment
    "2002:808:808::1",  # 6to4 of a public IPv4 address
]


@pytest.mark.parametrize("address", DISGUISED_INTERNAL)
def test_ipv4_inside_ipv6_is_judged_by_the_ipv4(address: str) -> None:
    assert egress.is_public(ipaddress.ip_address(address)) is False


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert egress.is_public(ipaddress.ip_address(address)) is True


@pytest.fixture
def strict(services: Services) -> Iterator[TestClient]:
    """The same service and database, configured as in production: private addresses refused."""
    settings = services.settings.model_copy(update={"webhook_allow_private": False})
    with TestClient(create_app(replace(services, settings=settings))) as client:
        client.headers["Authorization"] = f"Bearer {ADMIN_KEY}"
        yield client


def _disable(api: Api, endpoint_id: str) -> None:
    response = api.session.delete(
        api.admin_url(f"/webhook-endpoints/{endpoint_id}"), headers=api.admin_headers
    )
    assert response.status_code == 200, response.text


def test_registration_refuses_disguised_internal_addresses(strict: TestClient, api: Api) -> None:
    url = "/api/admin/v1/webhook-endpoints"
    for address in DISGUISED_INTERNAL:
        for hook in (f"http://[{address}]/hook", f"https://[{address}]:8443/hook"):
            error = assert_error(strict.post(url, json={"url": hook}), 422)  # type: ignore[arg-type]
            assert error["code"] == "webhook_url_not_allowed", (hook, error)
            assert error["details"] == {"field": "url"}
    metadata = strict.post(url, json={"url": "http://[64:ff9b::a9fe:a9fe]/latest/meta-data"})
    assert "169.254.169.254" in metadata.json()["error"]["message"]
    # Public literals need no name lookup and are accepted; changing one to a disguised
    # internal address is refused the same way.
    created = strict.post(url, json={"url": "http://[2606:4700:4700::1111]/hook"})
    assert created.status_code == 201, created.text
    endpoint = created.json()["data"]
    try:
        moved = strict.put(f"{url}/{endpoint['id']}", json={"url": "http://[2002:a9fe:a9fe::]/"})
        assert_error(moved, 422, "webhook_url_not_allowed")  # type: ignore[arg-type]
        listed = {e["id"]: e for e in api.admin_get("/webhook-endpoints").json()["data"]}
        assert listed[endpoint["id"]]["url"] == "http://[2606:4700:4700::1111]/hook"
    finally:
        _disable(api, endpoint["id"])


MALFORMED = [
    ("http://127.0.0.1:99999/hook", "invalid_request"),  # port out of range
    ("http://127.0.0.1:0/hook", "invalid_request"),
    ("http://127.0.0.1:abc/hook", "invalid_request"),
    ("http://[::1/hook", "invalid_request"),  # unclosed IPv6 literal
    ("http://[zz::zz]/hook", "invalid_request"),
    ("http:///hook", "invalid_request"),  # no host
    ("http://exa mple.com/hook", "invalid_request"),
    ("http://example.com\\@127.0.0.1/", "invalid_request"),
    ("http://-bad-.example/hook", "invalid_request"),
    ("http://user:pass@example.com/hook", "webhook_url_not_allowed"),
    ("http://example.com@127.0.0.1/hook", "webhook_url_not_allowed"),
    ("ftp://example.com/hook", "webhook_url_not_allowed"),
    ("file:///etc/passwd", "webhook_url_not_allowed"),
    ("gopher://example.com:70/_x", "webhook_url_not_allowed"),
    ("javascript:alert(1)//", "webhook_url_not_allowed"),
]


def test_malformed_urls_are_refused_in_the_envelope(api: Api) -> None:
    """Even where private addresses are allowed (the test server), syntax is checked."""
    probe = api.admin_post("/webhook-endpoints", {"url": "https://example.com/hook"})
    assert probe.status_code == 201, probe.text
    endpoint_id = probe.json()["data"]["id"]
    try:
        for url, code in MALFORMED:
            assert_error(api.admin_post("/webhook-endpoints", {"url": url}), 422, code)
            update = api.session.put(
                api.admin_url(f"/webhook-endpoints/{endpoint_id}"),
                json={"url": url},
                headers=api.admin_headers,
            )
            assert_error(update, 422, code)
    finally:
        _disable(api, endpoint_id)


def test_connect_time_check_refuses_what_resolves_inside(receiver: Receiver) -> None:
    """A name or literal that reaches an internal address is refused when the connection is
    opened, whatever the registration check said (DNS can answer differently later)."""
    port = receiver.url.rsplit(":", 1)[1]
    urls = [
        f"http://127.0.0.1:{port}",
        f"http://localhost:{port}",
        f"http://[::ffff:127.0.0.1]:{port}",
    ]
    for base in urls:
        path = receiver.path()
        with pytest.raises(httpx.ConnectError, match="non-public address"):
            egress.post(
                base + path, content=b"{}", headers={}, allow_private=False, timeout_seconds=5
            )
        assert receiver.at(path) == []
        # The same URL does reach the receiver when private addresses are allowed.
        response = egress.post(
            base + path, content=b"{}", headers={}, allow_private=True, timeout_seconds=5
        )
        assert response.status_code == 200
        assert len(receiver.at(path)) == 1


def test_delivery_checks_the_address_it_connects_to(
    api: Api, services: Services, receiver: Receiver
) -> None:
    """An endpoint accepted earlier (here: while private addresses were allowed) whose host
    now resolves inside is not delivered to; the attempt is logged as refused."""
    path = receiver.path()
    created = api.admin_post(
        "/webhook-endpoints",
        {"url": receiver.url.replace("127.0.0.1", "localhost") + path, "event_types": ["*"]},
    )
    assert created.status_code == 201, created.text
    endpoint = created.json()["data"]
    try:
        api.new_agent().fund(10)
        settings = services.settings.model_copy(update={"webhook_allow_private": False})
        Worker(replace(services, settings=settings)).drain()
        assert receiver.at(path) == []
        deliveries = api.admin_get(f"/webhook-endpoints/{endpoint['id']}/deliveries").json()
        assert deliveries["data"]
        for delivery in deliveries["data"]:
            assert delivery["status"] == "pending"  # retried on schedule, like any failure
            assert delivery["last_status_code"] is None
            assert "non-public address" in delivery["last_error"]
    finally:
        _disable(api, endpoint["id"])


@pytest.fixture
def trickler() -> Iterator[str]:
    """A receiver that sends its response headers one line every 0.3 s, for 6 s."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self.wfile.write(b"HTTP/1.1 200 OK\r\n")
            try:
                for _ in range(20):
                    self.wfile.write(b"x-slow: 1\r\n")
                    self.wfile.flush()
                    time.sleep(0.3)
                self.wfile.write(b"content-length: 0\r\n\r\n")
            except OSError:
                pass  # the client gave up, as it should

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_a_trickling_receiver_times_out_at_the_deadline(trickler: str) -> None:
    """The deadline covers the whole exchange: bytes arriving now and then do not extend it."""
    started = time.monotonic()
    with pytest.raises(httpx.TimeoutException):
        egress.post(trickler, content=b"{}", headers={}, allow_private=True, timeout_seconds=1.0)
    assert time.monotonic() - started < 2.0
    assert webhooks.DELIVERY_TIMEOUT_SECONDS <= 10


def test_secret_is_shown_only_at_creation_and_rotation(api: Api) -> None:
    created = api.admin_post("/webhook-endpoints", {"url": "https://example.com/hook"})
    assert created.status_code == 201, created.text
    endpoint = created.json()["data"]
    secret = endpoint["secret"]
    assert secret.startswith("whsec_")
    try:
        listed = api.admin_get("/webhook-endpoints")
        [mine] = [e for e in listed.json()["data"] if e["id"] == endpoint["id"]]
        assert "secret" not in mine
        assert "whsec_" not in listed.text
        updated = api.session.put(
            api.admin_url(f"/webhook-endpoints/{endpoint['id']}"),
            json={"event_types": ["wallet.funded"]},
            headers=api.admin_headers,
        )
        assert updated.status_code == 200, updated.text
        assert "whsec_" not in updated.text
        rotated = api.admin_post(f"/webhook-endpoints/{endpoint['id']}/rotate-secret")
        new_secret = rotated.json()["data"]["secret"]
        assert new_secret.startswith("whsec_")
        assert new_secret != secret
        assert "whsec_" not in api.admin_get("/webhook-endpoints").text
    finally:
        _disable(api, endpoint["id"])
