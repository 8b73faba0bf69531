"""Calling URLs that callers give us (webhooks, images, pages to scrape) safely.

The guard never lets a caller aim jobqueue at internal addresses (see shared.addresses
for which ones, including the IPv6 forms that embed an IPv4 address).

Checked at submit (a refused URL is a 422) and again where the connection is made:
clients from :func:`outbound_client` resolve the URL's host inside their transport,
check every address, and connect to a checked one (shared.guarded_transport), so DNS
cannot be re-bound between check and connect, and TLS verifies the real hostname.
Refused: schemes other than http/https, credentials in the URL, and any host with an
internal address. IPv4 hosts spelled in decimal, octal or hex are read the way
resolvers read them. ``JOBQUEUE_*_ALLOWED_HOSTS`` (names or CIDRs) lifts the block for
named receivers. Messages never say what a name resolved to. :func:`fetch` follows
redirects itself, checking every hop the same way.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy

import httpx

from shared.addresses import IPAddress, IPNetwork, in_networks, internal, literal_address
from shared.errors import InvalidInput, PermanentError
from shared.guarded_transport import GuardedTransport

HostResolver = Callable[[str, int], Awaitable[list[IPAddress]]]
"""``(host, port)`` -> its addresses; raises OSError when the name does not resolve."""


class UrlRefused(InvalidInput):
    """The URL may not be called: wrong scheme, credentials, or an internal address."""

    code = "url_refused"


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    """The operating system's resolver (getaddrinfo runs in a thread, off the loop)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port,
                                                         type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(info[4][0]) for info in infos]


class OutboundGuard:
    def __init__(self, allowed: Iterable[str] = (), field: str = "url",
                 resolver: HostResolver = system_resolver) -> None:
        self.field = field
        self.resolver = resolver
        self.allowed_hosts: set[str] = set()
        self.allowed_networks: list[IPNetwork] = []
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
        if in_networks(address, self.allowed_networks):
            return True
        return not internal(address)

    def check_literal(self, url: str) -> httpx.URL:
        """What can be checked without DNS (for payload validation): syntax, and the
        address when the host is one."""
        parsed = self.parse(url)
        literal = literal_address(parsed.host)
        if literal is not None and not self._permitted(parsed.host, literal):
            raise self._refuse(f"{parsed.host!r} is an internal address")
        return parsed

    async def addresses(self, host: str, port: int) -> list[IPAddress]:
        """Every address of ``host``, each checked; raise UrlRefused if one is internal.

        NOTE: the message names the host, never the address it resolved to: a 422 must
        not become a way to read internal DNS.
        """
        literal = literal_address(host)
        if literal is not None:
            if not self._permitted(host, literal):
                raise self._refuse(f"{host!r} is an internal address")
            return [literal]
        try:
            found = await self.resolver(host, port)
        except (OSError, UnicodeError):
            raise self._refuse(f"host {host!r} does not resolve") from None
        if not found:
            raise self._refuse(f"host {host!r} does not resolve")
        if not all(self._permitted(host, address) for address in found):
            raise self._refuse(f"{host!r} resolves to an internal address")
        return found

    async def connectable(self, host: str, port: int) -> list[str]:
        """The checked addresses as the transport connects to them."""
        return [str(address) for address in await self.addresses(host, port)]

    async def check(self, url: str) -> httpx.URL:
        """Parse, resolve and check every address (at submit)."""
        parsed = self.parse(url)
        await self.addresses(parsed.host,
                             parsed.port or (443 if parsed.scheme == "https" else 80))
        return parsed


class OutboundClient(httpx.AsyncClient):
    """An ``httpx.AsyncClient`` that only connects where its guard allows."""

    def __init__(self, guard: OutboundGuard, *, timeout: float,
                 max_connections: int | None = None,
                 verify: ssl.SSLContext | bool = True) -> None:
        limits = httpx.Limits(max_connections=max_connections)
        # NOTE: a jar whose policy allows no domain stores no cookie: one job's (or one
        # receiver's) cookies never ride along on another's requests.
        super().__init__(
            transport=GuardedTransport(guard.connectable, verify=verify, limits=limits),
            cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
            timeout=timeout, follow_redirects=False, trust_env=False)
        self.guard = guard


def outbound_client(allowed: Iterable[str], *, timeout: float,
                    max_connections: int | None = None) -> OutboundClient:
    """The client for callers' URLs: guarded by ``allowed``, no cookies, no redirects."""
    return OutboundClient(OutboundGuard(allowed), timeout=timeout,
                          max_connections=max_connections)


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
    """GET a caller's URL: every hop checked, at most ``max_bytes`` read, the whole
    fetch (redirects included) within ``timeout_seconds`` or a TimeoutError.

    ``guard`` checks each hop's syntax and literal address; the client's transport
    checks the addresses it connects to. A client that is not an
    :class:`OutboundClient` is not trusted to do that: a one-off guarded one is used.
    A refused hop (an internal address, even behind a redirect) is a PermanentError:
    retrying cannot make it allowed.
    """
    if not isinstance(client, OutboundClient):
        async with OutboundClient(guard, timeout=timeout_seconds) as own:
            return await fetch(own, guard, url, max_bytes=max_bytes,
                               max_redirects=max_redirects,
                               timeout_seconds=timeout_seconds, headers=headers)
    first = url
    try:
        # NOTE: one deadline for the whole fetch, every hop included: the client's
        # timeout bounds each read, so a server dripping a byte at a time would
        # otherwise hold the job until its own (much longer) timeout.
        async with asyncio.timeout(timeout_seconds):
            for _ in range(max_redirects + 1):
                target = guard.check_literal(url)
                async with client.stream("GET", target, headers=headers,
                                         timeout=timeout_seconds) as response:
                    if response.is_redirect:
                        url = str(target.join(response.headers["location"]))
                        continue
                    body = bytearray()
                    truncated = False
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > max_bytes:
                            del body[max_bytes:]
                            truncated = True
                            break
                    return Fetched(str(target), response.status_code, response.headers,
                                   bytes(body), truncated)
    except UrlRefused as exc:
        raise PermanentError(f"refused: {exc.message}") from None
    except TimeoutError:
        # An ordinary failure: the job is retried (a slow site may be quicker later).
        raise TimeoutError(f"fetching {first} took longer than {timeout_seconds:g}s "
                           "(the limit for the whole fetch, redirects included)") from None
    raise PermanentError(f"more than {max_redirects} redirects")
