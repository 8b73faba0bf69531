"""Delivering a job's outbox to its callback URL: signed, pinned, in order, retried.

The outbox (``jobs.outbox``) is the durable record of events still owed to the caller;
``outbox_due_at`` says when it next needs attention. One notifier at a time holds a
job's outbox (a lease in ``outbox_lease_until``), sends the oldest event, records the
attempt in ``webhook_deliveries``, and either removes the event (2xx, or attempts
exhausted) or schedules its retry. Events of one job are therefore delivered in order,
and two notifiers never send the same attempt.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection

from shared.clock import RedisClock
from shared.events import Event
from shared.ids import new_delivery_id
from shared.logs import get_log
from shared.outbound import OutboundGuard, UrlRefused
from webhooks.signing import signature_headers

log = get_log(__name__)
SNIPPET_CHARS = 500
USER_AGENT = "jobqueue-webhooks/0.1"


@dataclass(frozen=True)
class Attempt:
    status_code: int | None
    latency_ms: float
    error: str | None = None
    snippet: str | None = None
    retry_after: float | None = None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """``Retry-After`` as seconds: a number, or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError):
        return None


class Sender:
    """One POST of one event, signed, to the checked and pinned address."""

    def __init__(self, client: httpx.AsyncClient, guard: OutboundGuard, keys: list[bytes],
                 timeout_seconds: float) -> None:
        self.client = client
        self.guard = guard
        self.keys = keys
        self.timeout_seconds = timeout_seconds

    async def send(self, url: str, event: dict[str, Any]) -> Attempt:
        body = json.dumps(event, separators=(",", ":")).encode()
        headers = {**signature_headers(self.keys, event["id"], body),
                   "content-type": "application/json", "user-agent": USER_AGENT}
        started = time.perf_counter()

        def elapsed() -> float:
            return round((time.perf_counter() - started) * 1000, 2)

        try:
            target = await self.guard.check(url)
            pinned, host, extensions = target.pinned_request()
            response = await self.client.post(
                pinned, content=body, headers={**headers, **host}, extensions=extensions,
                timeout=self.timeout_seconds, follow_redirects=False)
        except UrlRefused as exc:
            return Attempt(None, elapsed(), error=f"refused: {exc.message}")
        except httpx.HTTPError as exc:
            return Attempt(None, elapsed(), error=f"{type(exc).__name__}: {exc}".strip())
        retry_after = None
        if response.status_code in (429, 503):
            retry_after = retry_after_seconds(response.headers.get("retry-after"), time.time())
        return Attempt(response.status_code, elapsed(),
                       error=None if 200 <= response.status_code < 300
                       else f"HTTP {response.status_code}",
                       snippet=response.text[:SNIPPET_CHARS], retry_after=retry_after)


class OutboxDeliverer:
    def __init__(self, jobs: AsyncCollection[dict[str, Any]],
                 deliveries: AsyncCollection[dict[str, Any]], sender: Sender,
                 clock: RedisClock, schedule: list[float], lease_seconds: float,
                 rng: random.Random | None = None) -> None:
        self.jobs = jobs
        self.deliveries = deliveries
        self.sender = sender
        self.clock = clock
        self.schedule = schedule
        self.lease_seconds = lease_seconds
        self.rng = rng or random.Random()

    async def deliver(self, job_id: str) -> None:
        """Send what is due from this job's outbox, if no other notifier holds it."""
        while await self._next(job_id):
            pass

    async def _next(self, job_id: str) -> bool:
        """Send the oldest due event; True when there may be more to send now."""
        now = self.clock.now()
        doc = await self.jobs.find_one_and_update(
            {"_id": job_id, "outbox_due_at": {"$lte": now},
             "$or": [{"outbox_lease_until": None}, {"outbox_lease_until": {"$lte": now}}]},
            {"$set": {"outbox_lease_until": now + timedelta(seconds=self.lease_seconds)}},
            projection={"outbox": 1, "callback_url": 1}, return_document=ReturnDocument.AFTER)
        if doc is None:
            return False
        if not doc.get("outbox") or not doc.get("callback_url"):
            await self._release(job_id)
            return False
        head = doc["outbox"][0]
        if head["next_at"] > now:  # its retry is not due yet
            await self.jobs.update_one({"_id": job_id}, {
                "$set": {"outbox_due_at": head["next_at"]},
                "$unset": {"outbox_lease_until": ""}})
            return False
        return await self._send_head(job_id, doc["callback_url"], head)

    async def _send_head(self, job_id: str, url: str, head: dict[str, Any]) -> bool:
        event = Event.model_validate(head).to_wire()
        attempt_no = head.get("attempts", 0) + 1
        result = await self.sender.send(url, event)
        now = self.clock.now()
        record: dict[str, Any] = {
            "_id": new_delivery_id(), "job_id": job_id,
            "event_id": event["id"], "event_type": event["type"], "url": url,
            "attempt": attempt_no, "status_code": result.status_code,
            "latency_ms": result.latency_ms, "error": result.error,
            "response_snippet": result.snippet, "event": event, "at": now,
            "next_attempt_at": None}
        with_log = {"jobId": job_id, "eventId": event["id"], "attempt": attempt_no,
                    "statusCode": result.status_code, "latencyMs": result.latency_ms}
        if result.delivered:
            record["outcome"] = "delivered"
            await self.deliveries.insert_one(record)
            log.info("webhook.delivered", **with_log)
            await self._remove_head(job_id, event["id"])
            return True
        if result.status_code == 410:
            record["outcome"] = "gone"
            await self.deliveries.insert_one(record)
            log.warning("webhook.gone", **with_log)
            await self.jobs.update_one({"_id": job_id}, {
                "$set": {"outbox": [], "callback_gone": True},
                "$unset": {"outbox_due_at": "", "outbox_lease_until": ""}})
            return False
        if attempt_no > len(self.schedule):
            record["outcome"] = "failed"
            await self.deliveries.insert_one(record)
            log.error("webhook.failed", error=result.error, **with_log)
            await self._remove_head(job_id, event["id"])
            return True
        delay = result.retry_after
        if delay is None:
            delay = self.schedule[attempt_no - 1] * self.rng.uniform(0.8, 1.2)
        next_at: datetime = now + timedelta(seconds=delay)
        record.update(outcome="retrying", next_attempt_at=next_at)
        await self.deliveries.insert_one(record)
        log.warning("webhook.retrying", error=result.error, retryInSeconds=round(delay, 3),
                    **with_log)
        await self.jobs.update_one({"_id": job_id, "outbox.0.id": event["id"]}, {
            "$set": {"outbox.0.attempts": attempt_no, "outbox.0.next_at": next_at,
                     "outbox_due_at": next_at},
            "$unset": {"outbox_lease_until": ""}})
        return False

    async def _remove_head(self, job_id: str, event_id: str) -> None:
        await self.jobs.update_one({"_id": job_id}, {
            "$pull": {"outbox": {"id": event_id}}, "$unset": {"outbox_lease_until": ""}})
        await self._clear_if_empty(job_id)

    async def _release(self, job_id: str) -> None:
        await self.jobs.update_one({"_id": job_id}, {"$unset": {"outbox_lease_until": ""}})
        await self._clear_if_empty(job_id)

    async def _clear_if_empty(self, job_id: str) -> None:
        # NOTE: a transition may append an event at any moment; only an outbox seen
        # empty in the same update loses its due time.
        await self.jobs.update_one({"_id": job_id, "outbox": {"$size": 0}},
                                   {"$unset": {"outbox_due_at": ""}})
