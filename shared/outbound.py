"""Calling URLs that callers give us (webhooks, images, pages to scrape) safely.

The guard never lets a caller aim jobqueue at internal addresses.

Checked at submit (a refused URL is a 422) and again right before connecting, against
the addresses the host resolves to *then*; the connection is pinned to the checked
address (the Host header and TLS SNI keep the name), so DNS cannot be re-bound between
check and connect. Refused: schemes other than http/https, credentials in the URL, and
any address that is not global unicast (loopback, private, link-local and cloud
metadata, CGNAT, multicast, reserved, unspecified, IPv4-mapped forms of those). IPv4
hosts spelled in decimal, octal or hex are read the way resolvers read them.
``JOBQUEUE_*_ALLOWED_HOSTS`` (names or CIDRs) lifts the block for named receivers.
:func:`fetch` follows redirects itself, checking every hop the same way.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

import httpx

from shared.errors import InvalidInput, PermanentError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
CGNAT = ipaddress.ip_network("100.64.0.0/10")


class UrlRefused(InvalidInput):
    """The URL may not be called: wrong scheme, credentials, or an internal address."""

    code = "url_refused"


@dataclass(frozen=True)
class Target:
    """A checked URL and the address to connect to."""

    url: httpx.URL
    address: str

    def pinned_request(self) -> tuple[httpx.URL, dict[str, str], dict[str, str]]:
        """URL with the checked address as host, plus the Host header and SNI name."""
        netloc = self.url.netloc.decode("ascii")
        extensions = {"sni_hostname": self.url.host} if self.url.scheme == "https" else {}
        return self.url.copy_with(host=self.address), {"Host": netloc}, extensions


def internal(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return (address.is_private or address.is_loopback or address.is_link_local
            or address.is_multicast or address.is_reserved or address.is_unspecified
            or (isinstance(address, ipaddress.IPv4Address) and address in CGNAT)
            or not address.is_global)


def literal_address(host: str) -> IPAddress | None:
    """The address a host names directly, in any spelling resolvers accept."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    try:  # decimal (2852039166), octal (0251.0376.0251.0376), hex (0xA9FEA9FE), short
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


class OutboundGuard:
    def __init__(self, allowed: Iterable[str] = (), field: str = "url") -> None:
        self.field = field
        self.allowed_hosts: set[str] = set()
        self.allowed_networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in allowed:
            try:
                self.allowed_networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self.allowed_hosts.add(entry.lower())

    def _refuse(self, message: str) -> UrlRefused:
        return UrlRefused(message, details=[{"field": self.field, "message": message,
                                             "type": "url_refused"}])

    def parse(self, url: str) -> httpx.URL:
        """Syntax checks that need no DNS."""
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, ValueError, TypeError):
            raise self._refuse("not a valid URL") from None
        if parsed.scheme not in ("http", "https"):
            raise self._refuse("only http and https URLs are allowed")
        if parsed.userinfo:
            raise self._refuse("credentials in the URL are not allowed")
        if not parsed.host:
            raise self._refuse("the URL has no host")
        return parsed

    def _permitted(self, host: str, address: IPAddress) -> bool:
        if host.lower() in self.allowed_hosts:
            return True
        if any(address in net for net in self.allowed_networks):
            return True
        return not internal(address)

    def check_literal(self, url: str) -> httpx.URL:
        """What can be checked without DNS (for payload validation): syntax, and the
        address when the host is one."""
        parsed = self.parse(url)
        literal = literal_address(parsed.host)
        if literal is not None and not self._permitted(parsed.host, literal):
            raise self._refuse(f"{parsed.host!r} is {literal}, an internal address")
        return parsed

    async def check(self, url: str) -> Target:
        """Parse, resolve and check every address; the first one is the one to use."""
        parsed = self.parse(url)
        host = parsed.host
        literal = literal_address(host)
        if literal is not None:
            addresses: list[IPAddress] = [literal]
        else:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, parsed.port or (443 if parsed.scheme == "https" else 80),
                    type=socket.SOCK_STREAM)
            except OSError:
                raise self._refuse(f"host {host!r} does not resolve") from None
            addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
        for address in addresses:
            if not self._permitted(host, address):
                raise self._refuse(f"{host!r} resolves to {address}, an internal address")
        return Target(parsed, str(addresses[0]))


@dataclass(frozen=True)
class Fetched:
    url: str
    """The final URL, after redirects."""
    status_code: int
    headers: httpx.Headers
    body: bytes
    truncated: bool


async def fetch(client: httpx.AsyncClient, guard: OutboundGuard, url: str, *,
                max_bytes: int, max_redirects: int, timeout_seconds: float,
                headers: dict[str, str] | None = None) -> Fetched:
    """GET a caller's URL: every hop checked and pinned, at most ``max_bytes`` read.

    A refused hop (an internal address, even behind a redirect) is a PermanentError:
    retrying cannot make it allowed.
    """
    for _ in range(max_redirects + 1):
        try:
            target = await guard.check(url)
        except UrlRefused as exc:
            raise PermanentError(f"refused: {exc.message}") from None
        pinned, host, extensions = target.pinned_request()
        async with client.stream("GET", pinned, headers={**(headers or {}), **host},
                                 extensions=extensions, timeout=timeout_seconds,
                                 follow_redirects=False) as response:
            if response.is_redirect:
                url = str(target.url.join(response.headers["location"]))
                continue
            body = bytearray()
            truncated = False
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    del body[max_bytes:]
                    truncated = True
                    break
            return Fetched(str(target.url), response.status_code, response.headers,
                           bytes(body), truncated)
    raise PermanentError(f"more than {max_redirects} redirects")
