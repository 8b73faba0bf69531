"""One signed POST of one event to a callback URL, bounded in time and in bytes.

A receiver is not trusted: it may answer with an endless or huge body, drip one byte a
second, redirect, or never answer. So each attempt has one overall deadline (connect,
send, and read the answer), at most ``MAX_ANSWER_BYTES`` of the answer are read (raw:
a compressed answer is never inflated), and redirects are never followed (a 3xx is a
failed attempt). Addresses are checked where the connection is made
(shared.outbound.OutboundClient).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from shared.outbound import UrlRefused
from shared.tenants import DEFAULT_TENANT
from webhooks.keys import KeySource, StaticKeys
from webhooks.signing import signature_headers

MAX_ANSWER_BYTES = 4096
SNIPPET_CHARS = 500
USER_AGENT = "jobqueue-webhooks/0.1"


def attempt_deadline(timeout_seconds: float, lease_seconds: float) -> float:
    """The whole attempt's time limit: the configured timeout, but always well inside
    the outbox lease, so the lease cannot run out while its holder is still sending."""
    return min(timeout_seconds, lease_seconds / 2)


@dataclass(frozen=True)
class Attempt:
    status_code: int | None
    latency_ms: float
    error: str | None = None
    snippet: str | None = None
    retry_after: str | None = None
    """The raw ``Retry-After`` of a 429 or 503; the deliverer clamps it."""

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class Sender:
    def __init__(self, client: httpx.AsyncClient, keys: list[bytes] | KeySource,
                 deadline_seconds: float) -> None:
        """``keys``: the same for every job, or the job's tenant's (webhooks.keys)."""
        self.client = client
        self.keys = StaticKeys(keys) if isinstance(keys, list) else keys
        self.deadline_seconds = deadline_seconds

    async def send(self, url: str, event: dict[str, Any], tenant: str = DEFAULT_TENANT
                   ) -> Attempt:
        """POST ``event`` signed with every active key of the job's ``tenant``
        (webhooks.keys.NoSigningKey, and nothing sent, when a stored tenant has none)."""
        keys = await self.keys.signing_keys(tenant)
        body = json.dumps(event, separators=(",", ":")).encode()
        headers = {**signature_headers(keys, event["id"], body),
                   "content-type": "application/json", "user-agent": USER_AGENT,
                   "accept-encoding": "identity"}
        started = time.perf_counter()

        def elapsed() -> float:
            return round((time.perf_counter() - started) * 1000, 2)

        try:
            async with asyncio.timeout(self.deadline_seconds):
                return await self._post(url, body, headers, elapsed)
        except TimeoutError:
            return Attempt(None, elapsed(), error=(
                f"no complete answer within {self.deadline_seconds:g}s"))
        except UrlRefused as exc:
            return Attempt(None, elapsed(), error=f"refused: {exc.message}")
        except httpx.HTTPError as exc:
            return Attempt(None, elapsed(), error=f"{type(exc).__name__}: {exc}".strip())

    async def _post(self, url: str, body: bytes, headers: dict[str, str],
                    elapsed: Callable[[], float]) -> Attempt:
        async with self.client.stream("POST", url, content=body, headers=headers,
                                      timeout=self.deadline_seconds) as response:
            answer = bytearray()
            async for chunk in response.aiter_raw():
                answer += chunk[:MAX_ANSWER_BYTES - len(answer)]
                if len(answer) >= MAX_ANSWER_BYTES:
                    break  # NOTE: leaving the stream unread closes the connection
        code = response.status_code
        retry_after = response.headers.get("retry-after") if code in (429, 503) else None
        return Attempt(code, elapsed(), error=None if 200 <= code < 300 else f"HTTP {code}",
                       snippet=answer.decode("utf-8", "replace")[:SNIPPET_CHARS],
                       retry_after=retry_after)
