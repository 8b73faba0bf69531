"""A real HTTP server on loopback that receives webhooks (or acts as a provider or a
website) and answers from a script per path: a list of (status, headers, body) used in
turn, the last one repeating."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Reply = tuple[int, dict[str, str], bytes]


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    url: str
    scripts: dict[str, list[Reply]] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on(self, path: str, *replies: Reply | int) -> str:
        """Script the answers for ``path``; return its full URL."""
        self.scripts[path] = [r if isinstance(r, tuple) else (r, {}, b"") for r in replies]
        return self.url + path

    def at(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]

    def reply(self, path: str) -> Reply:
        with self.lock:
            script = self.scripts.get(path.split("?")[0]) or [(404, {}, b"no such path")]
            return script.pop(0) if len(script) > 1 else script[0]


@contextmanager
def receiver() -> Iterator[Receiver]:
    server_ref: list[Receiver] = []

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            rec = server_ref[0]
            with rec.lock:
                rec.received.append(Received(self.command, self.path.split("?")[0],
                                             {k.lower(): v for k, v in self.headers.items()},
                                             body, time.time()))
            status, headers, payload = rec.reply(self.path)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _handle

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server_ref.append(Receiver(f"http://127.0.0.1:{server.server_address[1]}"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server_ref[0]
    finally:
        server.shutdown()
        server.server_close()
