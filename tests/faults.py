"""A fault-injecting TCP proxy for the tests: sits between a service and MongoDB or Redis
and loses replies, adds latency, resets connections or stops answering.

MongoDB traffic is framed by its wire protocol (a little-endian int32 length leads every
message), so a fault can target one request: ``lose_reply_to(b"claim")`` forwards the
next request whose bytes contain ``claim`` to the server, which applies it, then
swallows the server's reply and closes the client's connection, as a network that
failed at the worst moment would. Redis traffic is forwarded as it comes (``framed=False``).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from shared.supervise import cancel_and_wait

Match = Callable[[bytes], bool]


@dataclass(eq=False)
class _Link:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    lose_next_reply: bool = False

    def close(self) -> None:
        for writer in (self.client, self.server):
            with contextlib.suppress(Exception):
                writer.transport.abort()


@dataclass
class FaultProxy:
    target_host: str
    target_port: int
    framed: bool = True
    """MongoDB wire-protocol framing (faults per message); False forwards raw chunks."""
    latency: float = 0.0
    """Seconds added before every forwarded message or chunk."""
    blackhole: bool = False
    """Accept and read, but forward nothing: a server that stopped answering (SIGSTOP)."""
    refusing: bool = False
    """Drop every new connection at once: a server that is gone (SIGKILL)."""
    lost: list[bytes] = field(default_factory=list)
    """The requests whose replies were lost, in order."""
    _triggers: list[tuple[Match, int]] = field(default_factory=list)
    _links: set[_Link] = field(default_factory=set)
    _handlers: set[asyncio.Task[None]] = field(default_factory=set)
    _server: asyncio.Server | None = None
    port: int = 0

    @classmethod
    def for_url(cls, url: str, *, framed: bool = True) -> FaultProxy:
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 0, framed=framed)

    def url_for(self, url: str) -> str:
        """``url`` with its host and port replaced by this proxy's."""
        parts = urlsplit(url)
        netloc = f"127.0.0.1:{self.port}"
        if parts.username:
            netloc = f"{parts.netloc.rsplit('@', 1)[0]}@{netloc}"
        return urlunsplit(parts._replace(netloc=netloc))

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.reset()
        if self._server is not None:
            await self._server.wait_closed()
        # The server does not wait for its connection handlers; a blackholed one would
        # outlive the test's event loop.
        await cancel_and_wait(self._handlers)

    def lose_reply_to(self, match: bytes | Match, times: int = 1) -> None:
        """Lose the reply to the next ``times`` requests that match (framed only)."""
        test = match if callable(match) else (lambda data, m=match: m in data)
        self._triggers.append((test, times))

    def reset(self) -> None:
        """Drop every open connection at once (a reset, not a clean close)."""
        for link in list(self._links):
            link.close()
        self._links.clear()

    # -- plumbing -------------------------------------------------------------------------

    async def _accept(self, client_r: asyncio.StreamReader,
                      client_w: asyncio.StreamWriter) -> None:
        if self.refusing:
            client_w.transport.abort()
            return
        try:
            server_r, server_w = await asyncio.open_connection(self.target_host,
                                                               self.target_port)
        except OSError:
            client_w.transport.abort()
            return
        link = _Link(client_w, server_w)
        self._links.add(link)
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        pumps = [asyncio.create_task(self._pump(client_r, link, upstream=True)),
                 asyncio.create_task(self._pump(server_r, link, upstream=False))]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            link.close()
            self._links.discard(link)
            self._handlers.discard(handler)

    async def _read(self, reader: asyncio.StreamReader) -> bytes:
        if not self.framed:
            data = await reader.read(65536)
            if not data:
                raise EOFError
            return data
        head = await reader.readexactly(4)
        (length,) = struct.unpack("<i", head)
        return head + await reader.readexactly(length - 4)

    async def _pump(self, reader: asyncio.StreamReader, link: _Link, *, upstream: bool) -> None:
        out = link.server if upstream else link.client
        with contextlib.suppress(EOFError, asyncio.IncompleteReadError, ConnectionError,
                                 OSError):
            while True:
                data = await self._read(reader)
                while self.blackhole:
                    await asyncio.sleep(0.05)
                if self.latency:
                    await asyncio.sleep(self.latency)
                if upstream:
                    self._arm(link, data)
                elif link.lose_next_reply:
                    return  # the server applied the request; its answer is lost
                out.write(data)
                await out.drain()

    def _arm(self, link: _Link, request: bytes) -> None:
        for i, (test, times) in enumerate(self._triggers):
            if test(request):
                link.lose_next_reply = True
                self.lost.append(request)
                if times > 1:
                    self._triggers[i] = (test, times - 1)
                else:
                    del self._triggers[i]
                return


class ThreadedProxy:
    """A :class:`FaultProxy` on its own event loop in a thread, for services in other
    processes: it keeps forwarding while the test blocks (starting a process, say)."""

    def __init__(self, url: str, *, framed: bool = True) -> None:
        self.proxy = FaultProxy.for_url(url, framed=framed)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="fault-proxy")
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.proxy.start(), self._loop).result(10)

    def url_for(self, url: str) -> str:
        return self.proxy.url_for(url)

    def set(self, **faults: Any) -> None:
        """Set fault attributes (``blackhole``, ``refusing``, ``latency``) on the proxy."""
        def apply() -> None:
            for name, value in faults.items():
                setattr(self.proxy, name, value)

        self._loop.call_soon_threadsafe(apply)

    def reset(self) -> None:
        self._loop.call_soon_threadsafe(self.proxy.reset)

    def lose_reply_to(self, match: bytes | Match, times: int = 1) -> None:
        self._loop.call_soon_threadsafe(self.proxy.lose_reply_to, match, times)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.proxy.close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
