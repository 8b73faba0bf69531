"""A real HTTP(S) server on loopback that receives webhooks (or acts as a provider or a
website) and answers from a script per path: a list of answers used in turn, the last
one repeating. An answer is ``(status, headers, body)``, a bare status, or a
:class:`Slow` answer (held until an event is set, then streamed chunk by chunk: huge,
endless or dripping bodies)."""

from __future__ import annotations

import itertools
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Reply = tuple[int, dict[str, str], bytes]


@dataclass
class Slow:
    """An answer sent after ``hold`` is set (if given), then ``chunks`` one by one with
    ``pause`` seconds between them; ``length`` is the content-length to declare (None:
    chunked transfer encoding)."""

    status: int
    chunks: Iterable[bytes] = ()
    headers: dict[str, str] = field(default_factory=dict)
    length: int | None = None
    pause: float = 0.0
    hold: threading.Event | None = None


def endless(chunk: bytes = b"x" * 1024) -> Iterator[bytes]:
    return itertools.repeat(chunk)


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    connection: tuple[str, int] = ("", 0)
    """The client's address and port: one per connection."""
    finished: bool | None = None
    """Whether the whole answer was written (None while it is being written)."""
    written: int = 0


@dataclass
class Receiver:
    url: str
    scripts: dict[str, list[Reply | Slow]] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    closing: threading.Event = field(default_factory=threading.Event)

    def on(self, path: str, *replies: Reply | Slow | int) -> str:
        """Script the answers for ``path``; return its full URL."""
        self.scripts[path] = [r if isinstance(r, tuple | Slow) else (r, {}, b"")
                              for r in replies]
        return self.url + path

    def at(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]

    def reply(self, path: str) -> Reply | Slow:
        with self.lock:
            script = self.scripts.get(path.split("?")[0]) or [(404, {}, b"no such path")]
            return script.pop(0) if len(script) > 1 else script[0]


@contextmanager
def receiver(tls: ssl.SSLContext | None = None, keep_alive: bool = False
             ) -> Iterator[Receiver]:
    """Serve on 127.0.0.1 (HTTPS with ``tls``, a server-side context); with
    ``keep_alive``, HTTP/1.1 connections stay open for the next request."""
    server_ref: list[Receiver] = []

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            rec = server_ref[0]
            got = Received(self.command, self.path.split("?")[0],
                           {k.lower(): v for k, v in self.headers.items()},
                           body, time.time(), self.client_address[:2])
            with rec.lock:
                rec.received.append(got)
            answer = rec.reply(self.path)
            try:
                if isinstance(answer, Slow):
                    self._slow(rec, answer, got)
                else:
                    status, headers, payload = answer
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("content-length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    got.written = len(payload)
                got.finished = True
            except OSError:  # the client hung up (as it should on endless answers)
                got.finished = False
                self.close_connection = True

        def _slow(self, rec: Receiver, answer: Slow, got: Received) -> None:
            while answer.hold is not None and not answer.hold.wait(0.05):
                if rec.closing.is_set():
                    raise ConnectionAbortedError("receiver closing")
            self.protocol_version = "HTTP/1.1"  # for chunked transfer encoding
            self.close_connection = True
            self.send_response(answer.status)
            self.send_header("connection", "close")
            for name, value in answer.headers.items():
                self.send_header(name, value)
            chunked = answer.length is None
            if chunked:
                self.send_header("transfer-encoding", "chunked")
            else:
                self.send_header("content-length", str(answer.length))
            self.end_headers()
            for chunk in answer.chunks:
                if rec.closing.is_set():
                    raise ConnectionAbortedError("receiver closing")
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                self.wfile.flush()
                got.written += len(chunk)
                if answer.pause:
                    time.sleep(answer.pause)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")

        do_GET = do_POST = _handle

        def log_message(self, *args: object) -> None:
            pass

    if keep_alive:
        Handler.protocol_version = "HTTP/1.1"
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    scheme = "http"
    if tls is not None:
        scheme = "https"
        # NOTE: the handshake happens on the first read, in the connection's own thread,
        # so a client that rejects the certificate never blocks the accept loop.
        server.socket = tls.wrap_socket(server.socket, server_side=True,
                                        do_handshake_on_connect=False)
    server_ref.append(Receiver(f"{scheme}://127.0.0.1:{server.server_address[1]}"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server_ref[0]
    finally:
        server_ref[0].closing.set()
        server.shutdown()
        server.server_close()
