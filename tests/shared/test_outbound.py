"""The outbound guard: which addresses are internal (IPv6 forms that embed an IPv4
address included), refusal at submit without revealing DNS, and the guarded transport
against real local HTTP(S) servers: hostnames are resolved and checked where the
connection is made, a connection is never reused for another name, certificates are
verified against the real name, and no cookies are kept."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from services.api.app import create_app
from services.runtime import Stores
from shared.addresses import IPAddress, internal
from shared.errors import PermanentError
from shared.outbound import OutboundClient, OutboundGuard, UrlRefused, fetch, outbound_client
from shared.settings import Settings
from tests.certs import LocalCA, make_ca
from tests.receiver import Receiver, Slow, receiver

INTERNAL = [
    "127.0.0.1", "127.0.0.2", "10.0.0.5", "172.16.3.4", "192.168.1.10", "169.254.169.254",
    "100.64.0.1", "0.0.0.0", "224.0.0.1", "255.255.255.255", "::1", "::", "fe80::1",
    "fc00::1", "ff02::1",
    "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:10.0.0.1",  # IPv4-mapped
    "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "64:ff9b::a00:1",        # NAT64 of internal
    "64:ff9b:1::7f00:1", "64:ff9b:1::808:808",                       # NAT64 local use
    "2002:7f00:1::", "2002:a9fe:a9fe::1", "2002:808:808::1",         # 6to4
    "2001:0:4136:e378:8000:63bf:3fff:fdd2", "2001::1",               # Teredo
    "::7f00:1", "::a9fe:a9fe", "::808:808",                          # IPv4-compatible
    "::ffff:0:7f00:1", "::ffff:0:808:808",                           # IPv4-translated
]
GLOBAL = ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "2a00:1450:4001:80b::200e",
          "::ffff:8.8.8.8", "64:ff9b::808:808"]


@pytest.mark.parametrize("address", INTERNAL)
def test_internal_addresses(address: str) -> None:
    assert internal(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", GLOBAL)
def test_global_addresses(address: str) -> None:
    assert not internal(ipaddress.ip_address(address))


REFUSED = [
    "http://169.254.169.254/latest/meta-data", "http://10.0.0.5/hook", "http://172.16.3.4/",
    "http://192.168.1.10/", "http://100.64.0.1/", "http://0.0.0.0/", "http://[::1]/",
    "http://[::ffff:169.254.169.254]/", "http://2852039166/", "http://0251.0376.0251.0376/",
    "http://0xA9FEA9FE/", "file:///etc/passwd", "ftp://example.com/",
    "http://user:secret@example.com/", "http://127.0.0.2/", "http://[fe80::1]/",
    "http://224.0.0.1/", "http://[64:ff9b::a9fe:a9fe]/", "http://[2002:7f00:1::]/",
    "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/", "http://[::7f00:1]/",
    "http://[::ffff:0:7f00:1]/", "http://[64:ff9b:1::7f00:1]/",
]


@pytest.mark.parametrize("url", REFUSED)
async def test_internal_targets_are_refused_at_submit(api: httpx.AsyncClient, stores: Stores,
                                                      url: str) -> None:
    r = await api.post("/jobs", json={"jobType": "echo", "payload": {"text": "x"},
                                      "callbackUrl": url})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"][0]["field"] == "callbackUrl"
    assert await stores.jobs.count_documents({}) == 0


async def test_a_refusal_never_says_what_a_name_resolved_to(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"webhook_allowed_hosts": []}))
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://api") as api:
        r = await api.post("/jobs", json={"jobType": "echo", "payload": {"text": "x"},
                                          "callbackUrl": "http://localhost:9/hook"})
    assert r.status_code == 422, r.text
    assert "resolves to an internal address" in r.text
    assert "127.0.0.1" not in r.text and "::1" not in r.text

    guard = OutboundGuard([], resolver=resolver({"inside.test": "10.1.2.3"}))
    with pytest.raises(UrlRefused) as refused:
        await guard.check("https://inside.test/hook")
    assert refused.value.message == "'inside.test' resolves to an internal address"
    assert "10.1.2.3" not in str(refused.value.details)


@pytest.mark.parametrize(("allowed", "url"), [
    (["127.0.0.1"], "http://127.0.0.1:9/hook"),
    (["127.0.0.0/8"], "http://inside.test:9/hook"),
    (["127.0.0.0/8"], "http://[::ffff:127.0.0.1]:9/hook"),
    (["inside.test"], "http://inside.test:9/hook"),
])
async def test_allow_list_names_hosts_and_networks(allowed: list[str], url: str) -> None:
    names = resolver({"inside.test": "127.0.0.1"})
    await OutboundGuard(allowed, resolver=names).check(url)
    with pytest.raises(UrlRefused):
        await OutboundGuard([], resolver=names).check(url)


def resolver(names: dict[str, str]):  # type: ignore[no-untyped-def]
    """A resolver that knows only ``names`` (so tests need no /etc/hosts entries)."""
    async def resolve(host: str, port: int) -> list[IPAddress]:
        if host not in names:
            raise OSError(f"unknown host {host}")
        return [ipaddress.ip_address(names[host])]
    return resolve


LOOPBACK_NAMES = {"a.test": "127.0.0.1", "b.test": "127.0.0.1", "evil.test": "10.9.9.9"}


@pytest.fixture
def ca(tmp_path: Path) -> LocalCA:
    return make_ca(tmp_path)


@contextmanager
def tls_site(ca: LocalCA, *names: str) -> Iterator[tuple[Receiver, list[str]]]:
    """A keep-alive HTTPS server on 127.0.0.1 for ``names``; also the SNI names of its
    handshakes, one per connection."""
    context = ca.server(*names)
    handshakes: list[str] = []
    context.sni_callback = lambda _sock, name, _ctx: handshakes.append(name or "")
    with receiver(context, keep_alive=True) as site:
        site.on("/page", (200, {}, b"hello"))
        yield site, handshakes


def client_for(ca: LocalCA, allowed: list[str]) -> OutboundClient:
    guard = OutboundGuard(allowed, resolver=resolver(LOOPBACK_NAMES))
    return OutboundClient(guard, timeout=10, verify=ca.client_context())


async def get(client: OutboundClient, url: str) -> bytes:
    fetched = await fetch(client, client.guard, url, max_bytes=1000, max_redirects=0,
                          timeout_seconds=10)
    return fetched.body


async def test_a_connection_is_never_reused_for_another_name(ca: LocalCA) -> None:
    with tls_site(ca, "a.test", "b.test") as (site, handshakes):
        port = site.url.rsplit(":", 1)[1]
        async with client_for(ca, ["127.0.0.0/8"]) as client:
            assert await get(client, f"https://a.test:{port}/page") == b"hello"
            assert await get(client, f"https://a.test:{port}/page") == b"hello"
            assert await get(client, f"https://b.test:{port}/page") == b"hello"
        assert handshakes == ["a.test", "b.test"]  # a.test's connection was reused once
        assert len({r.connection for r in site.at("/page")}) == 2


async def test_the_certificate_is_checked_against_the_real_name(ca: LocalCA) -> None:
    with tls_site(ca, "a.test") as (site, _):
        port = site.url.rsplit(":", 1)[1]
        async with client_for(ca, ["127.0.0.0/8"]) as client:
            assert await get(client, f"https://a.test:{port}/page") == b"hello"
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await get(client, f"https://b.test:{port}/page")
        assert len(site.at("/page")) == 1  # b.test was never served


async def test_names_are_checked_where_the_connection_is_made(ca: LocalCA) -> None:
    with tls_site(ca, "a.test") as (site, _):
        port = site.url.rsplit(":", 1)[1]
        async with client_for(ca, []) as client:  # loopback not allowed
            with pytest.raises(PermanentError, match="resolves to an internal address"):
                await get(client, f"https://a.test:{port}/page")
            with pytest.raises(UrlRefused, match=r"evil\.test. resolves to an internal"):
                await client.get("http://evil.test/")  # any request, not only fetch
            with pytest.raises(PermanentError, match="is an internal address"):
                await get(client, f"https://0x7f000001:{port}/page")
        async with client_for(ca, ["a.test"]) as client:  # allowed by name
            assert await get(client, f"https://a.test:{port}/page") == b"hello"
        assert len(site.at("/page")) == 1


async def test_a_redirect_to_an_internal_address_is_refused() -> None:
    with receiver() as site:
        site.on("/hop", (302, {"location": "http://169.254.169.254/latest"}, b""))
        site.on("/dns", (302, {"location": "http://evil.test/"}, b""))
        guard = OutboundGuard(["127.0.0.1"], resolver=resolver(LOOPBACK_NAMES))
        async with OutboundClient(guard, timeout=10) as client:
            for path in ("/hop", "/dns"):
                with pytest.raises(PermanentError, match="internal address"):
                    await fetch(client, guard, site.url + path, max_bytes=100,
                                max_redirects=3, timeout_seconds=5)


async def test_the_worker_client_keeps_no_cookies() -> None:
    with receiver() as site:
        site.on("/login", (200, {"set-cookie": "session=secret; Path=/"}, b"ok"))
        site.on("/page", 200)
        async with outbound_client(["127.0.0.1"], timeout=10) as client:
            assert (await client.get(site.url + "/login")).status_code == 200
            assert (await client.get(site.url + "/page")).status_code == 200
            guard = OutboundGuard(["127.0.0.1"])
            await fetch(client, guard, site.url + "/page", max_bytes=100,
                        max_redirects=0, timeout_seconds=5)
        assert [r.headers.get("cookie") for r in site.at("/page")] == [None, None]


async def test_fetch_with_a_plain_client_still_checks_where_it_connects() -> None:
    with receiver() as site:
        site.on("/page", (200, {}, b"hello"))
        guard = OutboundGuard([], resolver=resolver({"loop.test": "127.0.0.1"}))
        async with httpx.AsyncClient() as plain:
            with pytest.raises(PermanentError, match="internal address"):
                await fetch(plain, guard, site.url.replace("127.0.0.1", "loop.test")
                            + "/page", max_bytes=100, max_redirects=0, timeout_seconds=5)
        assert site.at("/page") == []


async def test_the_timeout_bounds_the_whole_fetch_not_each_read() -> None:
    """A server dripping a byte a second never lets one read time out; the fetch as a
    whole still ends at its deadline."""
    with receiver() as site:
        site.on("/drip", Slow(200, (b"x" for _ in range(30)), pause=1.0))
        site.on("/hop", (302, {"location": "/drip"}, b""))
        guard = OutboundGuard(["127.0.0.1"])
        async with outbound_client(["127.0.0.1"], timeout=10) as client:
            with pytest.raises(TimeoutError, match="took longer than 2s"):
                await fetch(client, guard, site.url + "/hop", max_bytes=10_000,
                            max_redirects=1, timeout_seconds=2)
