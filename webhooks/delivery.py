"""Delivering a job's outbox to its callback URL: signed, in order, retried.

The outbox (``jobs.outbox``) is the durable record of events still owed to the caller;
``outbox_due_at`` says when it next needs attention. One notifier at a time holds a
job's outbox: a lease (``outbox_lease_until``) that names its holder
(``outbox_lease_owner``, a random token per hold). The holder sends the oldest event,
records the attempt in ``webhook_deliveries``, and either removes the event (2xx, or
attempts exhausted) or schedules its retry. Events of one job are therefore delivered
in order, and two notifiers never send the same attempt.
"""

from __future__ import annotations

import random
import secrets
from datetime import datetime, timedelta
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection

from shared.clock import RedisClock
from shared.events import Event
from shared.ids import new_delivery_id
from shared.logs import get_log
from shared.retry_after import retry_after_seconds
from shared.tenants import DEFAULT_TENANT
from webhooks.sender import Attempt, Sender

log = get_log(__name__)
JITTER = (0.8, 1.2)
RELEASE = {"outbox_lease_until": "", "outbox_lease_owner": ""}


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

    @property
    def retry_cap_seconds(self) -> float:
        """The longest wait a receiver's ``Retry-After`` may ask for."""
        return max(self.schedule, default=0.0)

    async def deliver(self, job_id: str) -> datetime | None:
        """Send what is due from this job's outbox, if no other notifier holds it.

        Returns when the head event's next attempt is due, when that is known.
        """
        owner = secrets.token_hex(8)
        while True:
            more, due_at = await self._next(job_id, owner)
            if not more:
                return due_at

    async def _next(self, job_id: str, owner: str) -> tuple[bool, datetime | None]:
        """Send the oldest due event; (True, _) when there may be more to send now."""
        now = self.clock.now()
        # NOTE: "not after now" (also when unset), not an $or of unset and <= now: some
        # servers answer a top-level $or with a collection scan, even beside an _id.
        doc = await self.jobs.find_one_and_update(
            {"_id": job_id, "outbox_due_at": {"$lte": now},
             "outbox_lease_until": {"$not": {"$gt": now}}},
            {"$set": {"outbox_lease_until": now + timedelta(seconds=self.lease_seconds),
                      "outbox_lease_owner": owner}},
            projection={"outbox": {"$slice": 1}, "callback_url": 1, "tenant": 1},
            return_document=ReturnDocument.AFTER)
        if doc is None:
            return False, None
        held = {"_id": job_id, "outbox_lease_owner": owner}
        if not doc.get("outbox") or not doc.get("callback_url"):
            await self.jobs.update_one(held, {"$unset": RELEASE})
            await self._clear_if_empty(job_id)
            return False, None
        head = doc["outbox"][0]
        if head["next_at"] > now:  # its retry is not due yet
            await self.jobs.update_one(held, {"$set": {"outbox_due_at": head["next_at"]},
                                              "$unset": RELEASE})
            return False, head["next_at"]
        tenant = doc.get("tenant") or DEFAULT_TENANT  # jobs stored before tenants: default
        return await self._send_head(held, doc["callback_url"], head, tenant)

    async def _send_head(self, held: dict[str, Any], url: str, head: dict[str, Any],
                         tenant: str) -> tuple[bool, datetime | None]:
        job_id = held["_id"]
        event = Event.model_validate(head).to_wire()
        attempt_no = head.get("attempts", 0) + 1
        result = await self.sender.send(url, event, tenant)
        now = self.clock.now()
        record = self._record(job_id, url, event, attempt_no, result, now)
        with_log = {"jobId": job_id, "eventId": event["id"], "attempt": attempt_no,
                    "statusCode": result.status_code, "latencyMs": result.latency_ms}
        # NOTE: the attempt is recorded whatever happens to the lease; every write to
        # the job below names the lease's owner, so a holder whose lease ran out (and
        # was taken over) changes nothing.
        if result.status_code == 410:
            record["outcome"] = "gone"
            await self.deliveries.insert_one(record)
            log.warning("webhook.gone", **with_log)
            kept = await self.jobs.update_one(held, {
                "$set": {"outbox": [], "callback_gone": True},
                "$unset": {"outbox_due_at": "", **RELEASE}})
            self._kept(kept.matched_count, with_log)
            return False, None
        if result.delivered or attempt_no > len(self.schedule):
            record["outcome"] = "delivered" if result.delivered else "failed"
            await self.deliveries.insert_one(record)
            if result.delivered:
                log.info("webhook.delivered", **with_log)
            else:
                log.error("webhook.failed", error=result.error, **with_log)
            kept = await self.jobs.update_one(held, {
                "$pull": {"outbox": {"id": event["id"]}}, "$unset": RELEASE})
            await self._clear_if_empty(job_id)
            return self._kept(kept.matched_count, with_log), None
        delay = retry_after_seconds(result.retry_after, now.timestamp(),
                                    self.retry_cap_seconds)
        if delay is None:
            delay = self.schedule[attempt_no - 1] * self.rng.uniform(*JITTER)
        next_at: datetime = now + timedelta(seconds=delay)
        record.update(outcome="retrying", next_attempt_at=next_at)
        await self.deliveries.insert_one(record)
        log.warning("webhook.retrying", error=result.error, retryInSeconds=round(delay, 3),
                    **with_log)
        kept = await self.jobs.update_one({**held, "outbox.0.id": event["id"]}, {
            "$set": {"outbox.0.attempts": attempt_no, "outbox.0.next_at": next_at,
                     "outbox_due_at": next_at},
            "$unset": RELEASE})
        return False, next_at if self._kept(kept.matched_count, with_log) else None

    @staticmethod
    def _record(job_id: str, url: str, event: dict[str, Any], attempt_no: int,
                result: Attempt, now: datetime) -> dict[str, Any]:
        return {"_id": new_delivery_id(), "job_id": job_id,
                "event_id": event["id"], "event_type": event["type"], "url": url,
                "attempt": attempt_no, "status_code": result.status_code,
                "latency_ms": result.latency_ms, "error": result.error,
                "response_snippet": result.snippet, "event": event, "at": now,
                "next_attempt_at": None}

    @staticmethod
    def _kept(matched: int, with_log: dict[str, Any]) -> bool:
        """Whether the lease was still ours when the outcome was written."""
        if not matched:
            log.warning("webhook.lease_lost", **with_log)
        return bool(matched)

    async def _clear_if_empty(self, job_id: str) -> None:
        # NOTE: a transition may append an event at any moment; only an outbox seen
        # empty in the same update loses its due time.
        await self.jobs.update_one({"_id": job_id, "outbox": {"$size": 0}},
                                   {"$unset": {"outbox_due_at": ""}})
