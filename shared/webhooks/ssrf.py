"""The SSRF guard for webhook deliveries: refuse URLs that reach non-public addresses, and pin
each request to the address that was vetted so a second DNS answer cannot redirect it."""

import ipaddress
import socket
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from shared.exceptions import InvalidInput

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

Resolver = Callable[[str, int], list[str]]
"""Turns (host, port) into IP address strings; injectable so tests need no DNS."""

DEFAULT_PORTS = {"http": 80, "https": 443}

# Named here rather than left to `is_global`, whose tables change between Python patch releases.
_SHARED_V4 = ipaddress.IPv4Network("100.64.0.0/10")  # CGNAT; Alibaba's metadata is 100.100.100.200
_DOCUMENTATION = (
    ipaddress.IPv4Network("192.0.2.0/24"),
    ipaddress.IPv4Network("198.51.100.0/24"),
    ipaddress.IPv4Network("203.0.113.0/24"),
    ipaddress.IPv6Network("2001:db8::/32"),
    ipaddress.IPv6Network("3fff::/20"),
)
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")
_UNIQUE_LOCAL = ipaddress.IPv6Network("fc00::/7")  # includes fd00:ec2::254, AWS IMDS over IPv6
_SITE_LOCAL = ipaddress.IPv6Network("fec0::/10")  # deprecated, but still not public
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # deprecated ::a.b.c.d, except :: and ::1
# inet_aton reads decimal, octal and hex parts; anything else is a name, not a number.
_NUMERIC_HOST_CHARS = frozenset(string.hexdigits + "xX.")


class BlockedDestination(InvalidInput):
    """A webhook URL that may not receive deliveries: wrong scheme, no host, non-public address."""

    code = "webhook_url_blocked"


@dataclass(frozen=True, slots=True)
class VettedURL:
    """A URL that passed the guard, with the addresses its host resolved to when it did."""

    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[str, ...]


def _blocked(host: str, reason: str) -> BlockedDestination:
    shown = repr(host) if host else "(none)"
    return BlockedDestination(
        f"webhook URL host {shown} is not allowed: {reason}",
        details={"host": host, "reason": reason},
    )


def system_resolver(host: str, port: int) -> list[str]:
    """Resolve `host` with the system resolver; the unique addresses, in the order given."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, ValueError):  # ValueError: IDNA-unencodable names, NUL bytes
        raise _blocked(host, "it could not be resolved") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def parse_address(text: str) -> IPAddress | None:
    """The IP address `text` denotes, including inet_aton's forms (`2130706433`, `0x7f.1`)."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    # getaddrinfo accepts these legacy forms, so the guard must read them the same way.
    if not text or not set(text) <= _NUMERIC_HOST_CHARS:
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(text))
    except OSError:
        return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _why_forbidden(address: IPAddress) -> str | None:
    """What kind of non-public address this is, or None for a public one."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            # Judged by the IPv4 address only: that is where the packets end up.
            inner = _why_forbidden(embedded)
            return None if inner is None else f"which embeds {embedded}, {inner}"
    # Ordered so the most specific name wins (169.254.0.0/16 is also "private").
    checks = (
        (address.is_unspecified, "an unspecified address"),
        (address.is_loopback, "a loopback address"),
        (address.is_link_local, "a link-local address (cloud metadata lives here)"),
        (address in _SHARED_V4, "a carrier-grade NAT address (some cloud metadata lives here)"),
        (address in _UNIQUE_LOCAL, "a unique-local address"),
        (address in _SITE_LOCAL, "a site-local address"),
        (address.is_multicast, "a multicast address"),
        (address == _BROADCAST, "the broadcast address"),
        (any(address in network for network in _DOCUMENTATION), "a documentation address"),
        (address.is_reserved, "a reserved address"),
        (address.is_private, "a private address"),
        (not address.is_global, "not a public address"),
    )
    return next((reason for forbidden, reason in checks if forbidden), None)


def is_forbidden(address: IPAddress) -> bool:
    """True when a webhook must not be sent to `address`: anything that is not public."""
    return _why_forbidden(address) is not None


def vet_url(url: str, *, allow_private: bool, resolver: Resolver = system_resolver) -> VettedURL:
    """Check that `url` is http(s) with a host whose every address is public (or private ones
    are allowed); raises BlockedDestination otherwise."""
    try:
        parts = urlsplit(url)
        explicit_port = parts.port
    except ValueError:
        raise _blocked("", "the URL could not be parsed") from None
    host = parts.hostname or ""
    if parts.scheme not in DEFAULT_PORTS:
        raise _blocked(host, f"only http and https URLs are allowed, not {parts.scheme!r}")
    if not host:
        raise _blocked(host, "the URL has no host")
    try:
        # The stdlib codec is the one getaddrinfo uses, so the name sent is the name resolved.
        host = host.encode("idna").decode("ascii")
    except UnicodeError:
        raise _blocked(host, "it is not a valid host name") from None
    port = DEFAULT_PORTS[parts.scheme] if explicit_port is None else explicit_port
    if port == 0:
        raise _blocked(host, "port 0 cannot be reached")

    resolved: list[IPAddress] = []
    for text in resolver(host, port):
        address = parse_address(text)
        if address is None:
            raise _blocked(host, f"it resolved to {text!r}, which is not an IP address")
        resolved.append(address)
    if not resolved:
        raise _blocked(host, "it could not be resolved")
    literal = parse_address(host)
    if not allow_private:
        # Every address counts: a name with one public and one private record is a rebinding trick.
        for address in [literal, *resolved] if literal is not None else resolved:
            reason = _why_forbidden(address)
            if reason is not None:
                raise _blocked(host, f"it resolves to {address}, {reason}")
    # An IP literal is not re-resolved when sent, so the literal is the destination.
    addresses = [literal] if literal is not None else resolved
    return VettedURL(
        url=url,
        scheme=parts.scheme,
        host=host,
        port=port,
        addresses=tuple(dict.fromkeys(str(address) for address in addresses)),
    )


def pinned_request(vetted: VettedURL) -> tuple[str, dict[str, str], dict[str, Any]]:
    """The URL, headers and httpx extensions that send a request to the first vetted address
    while the server, TLS SNI and the certificate check still see the host name."""
    if parse_address(vetted.host) is not None:
        return vetted.url, {}, {}
    address = ipaddress.ip_address(vetted.addresses[0])
    parts = urlsplit(vetted.url)
    userinfo, at, _ = parts.netloc.rpartition("@")
    netloc = f"{userinfo}{at}{f'[{address}]' if address.version == 6 else address}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    default_port = vetted.port == DEFAULT_PORTS[vetted.scheme]
    headers = {"Host": vetted.host if default_port else f"{vetted.host}:{vetted.port}"}
    extensions: dict[str, Any] = {}
    if vetted.scheme == "https":
        extensions["sni_hostname"] = vetted.host
    return urlunsplit(parts._replace(netloc=netloc)), headers, extensions


def redact_url(url: str) -> str:
    """`url` with its userinfo (where tokens hide as well as passwords) replaced by `***`."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(unparseable URL)"  # cannot tell where a credential would be, so show nothing
    if "@" not in parts.netloc:
        return url
    hostport = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"***@{hostport}"))
