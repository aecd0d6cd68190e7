"""Outbound HTTP to operator-registered URLs: well-formed URLs only, public addresses only,
a hard deadline per request.

A webhook URL is checked when it is registered, and the address each connection really
goes to is checked again as it is opened: a name may resolve elsewhere by then (DNS
rebinding), so the connection is made to the very address that was checked. IPv6 forms
that carry an IPv4 address inside (IPv4-mapped, IPv4-compatible, 6to4, Teredo, NAT64) are
judged by that IPv4 address, since a relay or translator on the path delivers them there.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import time
from functools import cache
from ipaddress import IPv4Address, IPv6Address
from ssl import SSLContext
from typing import Any
from urllib.parse import SplitResult, urlsplit

import httpcore
import httpx

from billfold.errors import ErrorCode, InvalidRequest

IPAddress = IPv4Address | IPv6Address

# RFC 6052's well-known NAT64 prefix: the last 32 bits are the IPv4 destination.
NAT64_WELL_KNOWN = ipaddress.ip_network("64:ff9b::/96")
# RFC 8215's local-use NAT64 prefix: the operator picks where the IPv4 address sits, and
# whatever it is, the translator is on the local network: never a public destination.
NAT64_LOCAL_USE = ipaddress.ip_network("64:ff9b:1::/48")
# RFC 4291's deprecated IPv4-compatible form, ::a.b.c.d (also holds :: and ::1).
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")

_HOST_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")
_DEFAULT_PORTS = {"http": 80, "https": 443}


class UnsafeWebhookUrl(InvalidRequest):
    code = ErrorCode.WEBHOOK_URL_NOT_ALLOWED


class NonPublicAddress(httpcore.ConnectError):
    """A connection refused before it was opened: its address is internal."""


def embedded_ipv4(address: IPv6Address) -> list[IPv4Address]:
    """The IPv4 addresses an IPv6 address carries, by every standard embedding."""
    found: list[IPv4Address] = []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)  # (server, client); the client comes un-obfuscated
    if address in NAT64_WELL_KNOWN or address in IPV4_COMPATIBLE:
        found.append(IPv4Address(int(address) & 0xFFFF_FFFF))
    return found


def is_public(address: IPAddress) -> bool:
    """Globally routable unicast, and so is any IPv4 address it carries."""
    if not address.is_global or address.is_multicast:
        return False
    if isinstance(address, IPv6Address):
        if address in NAT64_LOCAL_USE:
            return False
        return all(is_public(inner) for inner in embedded_ipv4(address))
    return True


def describe(address: IPAddress) -> str:
    """The address, and the IPv4 address it carries if any (for error messages)."""
    inner = embedded_ipv4(address) if isinstance(address, IPv6Address) else []
    return f"{address}, which carries {inner[-1]}" if inner else str(address)


def _refuse(message: str) -> InvalidRequest:
    return InvalidRequest(message, details={"field": "url"})


def validate_url(url: str) -> SplitResult:
    """The URL's syntax: http(s), a valid host, a port in range, no credentials."""
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F or ch == "\\" for ch in url):
        raise _refuse("A webhook URL must not contain spaces, control characters or '\\'.")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises for a port that is not a number in 0-65535
        httpx.URL(url)  # and what the client would refuse when sending
    except (ValueError, httpx.InvalidURL) as exc:
        raise _refuse(f"The webhook URL is not a valid URL: {exc}.") from None
    if parts.scheme not in _DEFAULT_PORTS:
        raise UnsafeWebhookUrl("A webhook URL must be http(s)://host/…", details={"field": "url"})
    if "@" in parts.netloc:
        raise UnsafeWebhookUrl(
            "A webhook URL must not carry credentials (user:password@).", details={"field": "url"}
        )
    host = parts.hostname
    if not host:
        raise _refuse("The webhook URL has no host.")
    if port == 0:
        raise _refuse("The webhook URL's port must be between 1 and 65535.")
    if parts.netloc.startswith("[") or ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _refuse("The webhook URL's IPv6 address is not valid.") from None
    elif not _valid_hostname(host):
        raise _refuse("The webhook URL's host is not a valid host name.")
    return parts


def _valid_hostname(host: str) -> bool:
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError:
        return False
    labels = ascii_host.removesuffix(".").split(".")
    return len(ascii_host) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels)


def check_url(url: str, *, allow_private: bool) -> None:
    """A well-formed http(s) URL; and unless allowed, its host must resolve only to public
    addresses (server-side request forgery). Deliveries check the address again as they
    connect."""
    parts = validate_url(url)
    if allow_private:
        return
    assert parts.hostname is not None
    try:
        addresses = _resolve(parts.hostname, parts.port or _DEFAULT_PORTS[parts.scheme])
    except (OSError, UnicodeError, ValueError):
        raise UnsafeWebhookUrl(
            "The webhook host does not resolve.", details={"field": "url"}
        ) from None
    for address in addresses:
        if not is_public(address):
            raise UnsafeWebhookUrl(
                f"The webhook host resolves to a non-public address ({describe(address)}).",
                details={"field": "url"},
            )


def _resolve(host: str, port: int) -> list[IPAddress]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]))
        if address not in addresses:
            addresses.append(address)
    return addresses


def post(
    url: str,
    *,
    content: bytes,
    headers: dict[str, str],
    allow_private: bool,
    timeout_seconds: float,
) -> httpx.Response:
    """POST and return the status and headers (the body is not read). The whole exchange,
    from name lookup to the response headers, must fit in `timeout_seconds`; unless
    allowed, every address connected to must be public. Raises httpx.HTTPError."""
    backend = _GuardedBackend(
        allow_private=allow_private, deadline=time.monotonic() + timeout_seconds
    )
    with (
        httpx.Client(
            transport=_Transport(backend),
            timeout=httpx.Timeout(timeout_seconds),
            follow_redirects=False,
            trust_env=False,  # a proxy from the environment would bypass the address check
        ) as client,
        client.stream("POST", url, content=content, headers=headers) as response,
    ):
        return response


@cache
def _tls() -> SSLContext:
    return httpx.create_ssl_context()


class _Transport(httpx.HTTPTransport):
    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        super().__init__(verify=_tls(), trust_env=False)
        # httpx offers no way to hand its pool a network backend: build the pool again.
        self._pool = httpcore.ConnectionPool(ssl_context=_tls(), network_backend=backend)


class _GuardedBackend(httpcore.NetworkBackend):
    """Resolves the host itself, refuses internal addresses, connects to the address it
    checked, and holds every step to one deadline."""

    def __init__(self, *, allow_private: bool, deadline: float) -> None:
        self._inner = httpcore.SyncBackend()
        self._allow_private = allow_private
        self._deadline = deadline

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        targets = [host]
        if not self._allow_private:
            try:
                addresses = _resolve(host, port)
            except (OSError, UnicodeError, ValueError) as exc:
                raise httpcore.ConnectError(f"{host} does not resolve: {exc}") from None
            for address in addresses:
                if not is_public(address):
                    raise NonPublicAddress(
                        f"{host} resolves to a non-public address ({describe(address)})"
                    )
            targets = [str(address) for address in addresses]
        error: httpcore.ConnectError | None = None
        for target in targets:
            try:
                stream = self._inner.connect_tcp(
                    target,
                    port,
                    timeout=_within(self._deadline, timeout, httpcore.ConnectTimeout),
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except httpcore.ConnectError as exc:
                error = exc
                continue
            return _DeadlineStream(stream, self._deadline)
        assert error is not None
        raise error

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _DeadlineStream(httpcore.NetworkStream):
    """A stream whose every read and write ends by the request's deadline, so a receiver
    that trickles bytes cannot hold a delivery past it."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: float) -> None:
        self._inner = inner
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _within(self._deadline, timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _within(self._deadline, timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.start_tls(
            ssl_context,
            server_hostname=server_hostname,
            timeout=_within(self._deadline, timeout, httpcore.ConnectTimeout),
        )
        return _DeadlineStream(stream, self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


def _within(deadline: float, timeout: float | None, error: type[Exception]) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise error("the request ran past its deadline")
    return remaining if timeout is None else min(timeout, remaining)
