"""An httpx transport that connects only to addresses a check allowed.

The check runs where the connection is made: httpcore asks the network backend to
connect to the URL's *hostname*; :class:`GuardedBackend` resolves it, has every address
checked, and opens the socket to a checked address. So DNS cannot be re-bound between
check and connect, the URL keeps its hostname (the pool keys connections by hostname,
never by IP, so one name's TLS connection is never reused for another name), and TLS
verifies the certificate against the real name.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable, Iterable

import httpcore
import httpx

Resolve = Callable[[str, int], Awaitable[list[str]]]
"""``(host, port)`` -> the checked addresses to connect to, in order; raises to refuse."""


class GuardedBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, resolve: Resolve,
                 inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self.resolve = resolve
        self.inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int,
                          timeout: float | None = None,  # noqa: ASYNC109 (httpcore's API)
                          local_address: str | None = None,
                          socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
                          ) -> httpcore.AsyncNetworkStream:
        addresses = await self.resolve(host, port)
        failure: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for address in addresses:
            try:
                return await self.inner.connect_tcp(address, port, timeout, local_address,
                                                    socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        raise failure or httpcore.ConnectError(f"{host} has no address")

    async def connect_unix_socket(
            self, path: str,
            timeout: float | None = None,  # noqa: ASYNC109 (httpcore's API)
            socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not outbound targets")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """``httpx.AsyncHTTPTransport`` whose connections go through :class:`GuardedBackend`."""

    def __init__(self, resolve: Resolve, *, verify: ssl.SSLContext | bool = True,
                 limits: httpx.Limits | None = None) -> None:
        limits = limits or httpx.Limits()
        context = verify if isinstance(verify, ssl.SSLContext) else httpx.create_ssl_context(
            verify=verify, trust_env=False)
        super().__init__(verify=context, limits=limits, trust_env=False)
        # NOTE: httpx 0.28 takes no network backend, so the pool it built is replaced by
        # an equal one that has ours (httpx's request handling only calls self._pool).
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=context, max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(resolve))
