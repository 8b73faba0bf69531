"""Limits only a real ``jobqueue api`` process has: the request head bound by the HTTP
server, and the process stopping loudly when its group-commit flusher dies."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.settings import Settings
from tests.support import Service, lines, spawn

HEAD_LIMIT = 16 * 1024


@pytest.fixture
def api_process(settings: Settings, tmp_path: Path) -> Iterator[Service]:
    service = spawn("api", settings.model_copy(update={"max_header_bytes": HEAD_LIMIT}),
                    tmp_path / "out")
    yield service
    if service.process.poll() is None:
        service.stop()


def send_head(url: str, head: bytes) -> bytes:
    """Send a request head in pieces, stop once it is past the limit, and read the
    answer (not sending more after that avoids a reset losing it)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        for start in range(0, len(head), 4096):
            sock.sendall(head[start:start + 4096])
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


@pytest.mark.parametrize("shape", ["one huge value", "many headers"])
def test_oversized_request_head_is_431_json(api_process: Service, shape: str) -> None:
    assert api_process.url
    if shape == "one huge value":
        headers = b"X-Big: " + b"a" * (HEAD_LIMIT + 1024) + b"\r\n"
    else:
        headers = b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 100) for i in range(200))
    # NOTE: the head is never finished (no blank line): the server must answer from
    # the size alone, without waiting for (or buffering) the rest.
    answer = send_head(api_process.url, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + headers)
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 431"), answer[:200]
    body = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert body["error"]["code"] == "headers_too_large"
    assert body["error"]["details"]["maxBytes"] == HEAD_LIMIT


def test_head_under_the_limit_is_served(api_process: Service) -> None:
    assert api_process.url
    r = httpx.get(f"{api_process.url}/healthz", headers={"X-Fine": "c" * 8000})
    assert r.status_code == 200


async def test_a_dying_flusher_answers_everyone_and_stops_the_process(
        settings: Settings, tmp_path: Path) -> None:
    handlers = [*settings.handler_modules, "tests.services.api.flusher_fault"]
    service = spawn("api", settings.model_copy(update={"handler_modules": handlers}),
                    tmp_path / "out")
    try:
        async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
            bodies = [{"jobType": "echo", "payload": {"text": str(i)}} for i in range(30)]
            bodies.insert(15, {"jobType": "breakFlusher", "payload": {}})
            answers = await asyncio.gather(*(client.post("/jobs", json=b) for b in bodies),
                                           return_exceptions=True)
        # Every caller got an answer: stored (202), or refused while the flusher died
        # (503); or the connection closed as the process stopped.
        for answer in answers:
            if isinstance(answer, httpx.Response):
                assert answer.status_code in (202, 503), answer.text
            else:
                assert isinstance(answer, httpx.TransportError), answer
        deadline = time.monotonic() + 30
        while service.process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert service.process.returncode == 70
        log = [json.loads(line) for line in lines(service.output) if line.startswith("{")]
        assert any(e["event"] == "submit.flusher_died" and e["level"] == "critical"
                   for e in log), log[-5:]
    finally:
        if service.process.poll() is None:
            service.kill()


@pytest.mark.parametrize(("depth", "status"), [(900, 422), (3000, 400), (100_000, 400)])
def test_deep_bodies_are_4xx_from_the_real_server(api_process: Service, depth: int,
                                                  status: int) -> None:
    """The JSON parser's recursion limit (3,000) and the payload depth limit (900)
    through the real HTTP stack."""
    assert api_process.url
    body = '{"jobType":"echo","payload":{"text":' + '{"a":' * depth + "1" + "}" * depth + "}}"
    r = httpx.post(f"{api_process.url}/jobs", content=body,
                   headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == status, r.text[:300]
    assert r.json()["error"]["code"]
