"""The SSRF guard: what it refuses, what it allows, and that a pinned request really goes to the
vetted address (a real HTTP server on loopback)."""

import ipaddress
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from shared.exceptions import InvalidInput
from shared.webhooks.ssrf import (
    BlockedDestination,
    Resolver,
    VettedURL,
    is_forbidden,
    pinned_request,
    redact_url,
    system_resolver,
    vet_url,
)

PUBLIC_V4 = "93.184.215.14"
PUBLIC_V6 = "2606:2800:21f:cb07:6820:80da:af6b:8b2c"


def resolve_to(*addresses: str) -> Resolver:
    """A resolver that answers every name with `addresses`: no DNS needed."""

    def resolve(host: str, port: int) -> list[str]:
        return list(addresses)

    return resolve


def echo_resolver(host: str, port: int) -> list[str]:
    """Returns the host unchanged, as a naive resolver would for IP literals."""
    return [host]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://10.0.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/",
        "http://2130706433/",
        "http://0x7f.0.0.1/",
        "http://017700000001/",
        "http://[::ffff:127.0.0.1]/",
        "http://localhost:8080/hook",
        "http://100.100.100.200/",
        "http://[fd00:ec2::254]/",
        "http://0.0.0.0:9000/",
    ],
)
def test_internal_destinations_are_refused_with_the_system_resolver(url: str) -> None:
    with pytest.raises(BlockedDestination) as caught:
        vet_url(url, allow_private=False)
    assert caught.value.code == "webhook_url_blocked"
    assert "resolves to" in caught.value.message


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://2130706433/", "127.0.0.1"),
        ("http://0x7f.0.0.1/", "127.0.0.1"),
        ("http://0x7f.1/", "127.0.0.1"),
        ("http://017700000001/", "127.0.0.1"),
        ("http://[::ffff:7f00:1]/", "127.0.0.1"),
        ("http://169.254.169.254/", "169.254.169.254"),
    ],
)
def test_numeric_hosts_are_refused_even_when_the_resolver_echoes_them(url: str, shown: str) -> None:
    with pytest.raises(BlockedDestination) as caught:
        vet_url(url, allow_private=False, resolver=echo_resolver)
    assert shown in caught.value.message


def test_an_ip_literal_is_judged_even_if_the_resolver_claims_a_public_address() -> None:
    with pytest.raises(BlockedDestination, match="loopback"):
        vet_url("http://127.0.0.1/", allow_private=False, resolver=resolve_to(PUBLIC_V4))


def test_the_error_names_the_host_and_the_reason_and_is_a_422() -> None:
    with pytest.raises(BlockedDestination) as caught:
        vet_url("http://localhost:8080/hook", allow_private=False)
    error = caught.value
    assert isinstance(error, InvalidInput)
    assert error.status_code == 422
    assert "'localhost'" in error.message
    assert "127.0.0.1, a loopback address" in error.message
    assert "Traceback" not in error.message
    assert error.details["host"] == "localhost"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
        ("gopher://example.com:70/", "only http and https"),
        ("http:///nohost", "no host"),
        ("https://", "no host"),
        ("http://example.com:99999/", "could not be parsed"),
        ("http://[::1/", "could not be parsed"),
        ("http://example.com:0/", "port 0"),
    ],
)
def test_malformed_or_non_http_urls_are_refused_before_resolving(url: str, reason: str) -> None:
    def must_not_resolve(host: str, port: int) -> list[str]:
        raise AssertionError(f"resolved {host}")

    with pytest.raises(BlockedDestination, match=reason):
        vet_url(url, allow_private=True, resolver=must_not_resolve)


def test_a_public_host_is_allowed_and_the_resolver_sees_host_and_default_port() -> None:
    calls: list[tuple[str, int]] = []

    def resolver(host: str, port: int) -> list[str]:
        calls.append((host, port))
        return [PUBLIC_V4, PUBLIC_V4, PUBLIC_V6]

    vetted = vet_url("https://Hooks.Example.com/x?y=1", allow_private=False, resolver=resolver)

    assert calls == [("hooks.example.com", 443)]
    assert vetted == VettedURL(
        url="https://Hooks.Example.com/x?y=1",
        scheme="https",
        host="hooks.example.com",
        port=443,
        addresses=(PUBLIC_V4, PUBLIC_V6),
    )


def test_an_explicit_port_is_kept() -> None:
    vetted = vet_url(
        "http://hooks.example.com:8443/", allow_private=False, resolver=resolve_to(PUBLIC_V4)
    )
    assert vetted.port == 8443


def test_one_private_record_among_public_ones_refuses_the_host() -> None:
    with pytest.raises(BlockedDestination, match=r"10\.1\.2\.3, a private address"):
        vet_url(
            "https://rebind.example.com/",
            allow_private=False,
            resolver=resolve_to(PUBLIC_V4, "10.1.2.3"),
        )


@pytest.mark.parametrize(
    ("answer", "reason"), [((), "could not be resolved"), (("nope",), "not an IP")]
)
def test_an_empty_or_non_ip_resolver_answer_is_refused(
    answer: tuple[str, ...], reason: str
) -> None:
    with pytest.raises(BlockedDestination, match=reason):
        vet_url("https://hooks.example.com/", allow_private=True, resolver=resolve_to(*answer))


def test_allow_private_lets_loopback_through() -> None:
    vetted = vet_url("http://localhost:8080/hook", allow_private=True)
    assert vetted.host == "localhost"
    assert vetted.port == 8080
    assert "127.0.0.1" in vetted.addresses


def test_an_ip_literal_is_its_own_address() -> None:
    vetted = vet_url("http://2130706433/", allow_private=True, resolver=echo_resolver)
    assert vetted.addresses == ("127.0.0.1",)


def test_system_resolver_returns_unique_addresses_for_localhost() -> None:
    addresses = system_resolver("localhost", 80)
    assert "127.0.0.1" in addresses
    assert len(addresses) == len(set(addresses))


@pytest.mark.parametrize(
    "address",
    [
        "0.0.0.0",
        "127.0.0.53",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "100.100.100.200",
        "224.0.0.1",
        "239.255.255.250",
        "255.255.255.255",
        "240.0.0.1",
        "192.0.2.10",
        "198.51.100.7",
        "203.0.113.9",
        "198.18.0.1",
        "::",
        "::1",
        "fe80::1",
        "fc00::1",
        "fd00:ec2::254",
        "fec0::1",
        "ff02::1",
        "ff0e::1",
        "2001:db8::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "::10.0.0.1",
        "2002:7f00:1::",
        "2002:a9fe:a9fe::1",
        "64:ff9b::a9fe:a9fe",
        "64:ff9b::7f00:1",
    ],
)
def test_non_public_addresses_are_forbidden(address: str) -> None:
    assert is_forbidden(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address",
    [
        PUBLIC_V4,
        "8.8.8.8",
        "1.1.1.1",
        PUBLIC_V6,
        "::ffff:93.184.215.14",
        "2002:5db8:d70e::1",
        "64:ff9b::5db8:d70e",
    ],
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert not is_forbidden(ipaddress.ip_address(address))


def test_pinned_http_request_targets_the_address_and_keeps_path_query_and_host() -> None:
    vetted = vet_url(
        "http://hooks.example.com:8080/in?x=1", allow_private=False, resolver=resolve_to(PUBLIC_V4)
    )
    url, headers, extensions = pinned_request(vetted)
    assert url == f"http://{PUBLIC_V4}:8080/in?x=1"
    assert headers == {"Host": "hooks.example.com:8080"}
    assert extensions == {}


def test_pinned_https_request_keeps_the_name_for_sni_and_the_certificate() -> None:
    vetted = vet_url(
        "https://user:pw@hooks.example.com/in", allow_private=False, resolver=resolve_to(PUBLIC_V6)
    )
    url, headers, extensions = pinned_request(vetted)
    assert url == f"https://user:pw@[{PUBLIC_V6}]/in"
    assert headers == {"Host": "hooks.example.com"}
    assert extensions == {"sni_hostname": "hooks.example.com"}


def test_pinned_request_uses_the_first_vetted_address() -> None:
    vetted = vet_url(
        "https://hooks.example.com/", allow_private=False, resolver=resolve_to("8.8.8.8", PUBLIC_V4)
    )
    url, _, _ = pinned_request(vetted)
    assert url == "https://8.8.8.8/"


@pytest.mark.parametrize("url", [f"https://{PUBLIC_V4}/in", f"http://[{PUBLIC_V6}]:8080/x"])
def test_an_ip_literal_url_is_sent_unchanged(url: str) -> None:
    vetted = vet_url(url, allow_private=False)
    assert pinned_request(vetted) == (url, {}, {})


class _HostRecorder(BaseHTTPRequestHandler):
    hosts: list[str | None]

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.hosts.append(self.headers.get("Host"))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Keep test output quiet."""


@pytest.fixture
def server() -> Iterator[tuple[ThreadingHTTPServer, list[str | None]]]:
    hosts: list[str | None] = []
    handler = type("Handler", (_HostRecorder,), {"hosts": hosts})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd, hosts
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_a_pinned_request_reaches_the_vetted_address_with_the_original_host(
    server: tuple[ThreadingHTTPServer, list[str | None]],
) -> None:
    httpd, hosts = server
    port = httpd.server_address[1]
    resolved: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        resolved.append(host)
        return ["127.0.0.1"] if host == "pinned.test" else []

    vetted = vet_url(f"http://pinned.test:{port}/x", allow_private=True, resolver=resolver)
    url, headers, extensions = pinned_request(vetted)
    # trust_env off: no proxy may stand between the client and the pinned address.
    with httpx.Client(trust_env=False, timeout=5) as client:
        response = client.post(url, content=b"{}", headers=headers, extensions=extensions)

    assert response.status_code == 204
    assert url == f"http://127.0.0.1:{port}/x"
    assert hosts == [f"pinned.test:{port}"]
    assert resolved == ["pinned.test"]  # httpx never looked the name up again


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("https://user:s3cret@hooks.example.com/x?q=1", "https://***@hooks.example.com/x?q=1"),
        ("https://:s3cret@hooks.example.com:8443/", "https://***@hooks.example.com:8443/"),
        ("https://user:p%40ss@[::1]:9/", "https://***@[::1]:9/"),
        ("https://TOKEN@hooks.example.com/", "https://***@hooks.example.com/"),
        ("https://hooks.example.com/x", "https://hooks.example.com/x"),
        ("http://[::1/", "(unparseable URL)"),
    ],
)
def test_redact_url_hides_the_userinfo(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted
