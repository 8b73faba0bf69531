"""The notifier: turns job events into webhook deliveries.

Pub/sub is the doorbell (an event was published: look at that job's outbox now); the
sweep is the safety net, so events published while no notifier listened, or lost on the
way, are still delivered. Between sweeps the notifier sleeps until the earliest due
outbox (a scheduled retry, by this notifier or another), but never longer than the
sweep interval; a retry scheduled here while it sleeps wakes it early. So retries go
out on their schedule, not on the next periodic sweep.
"""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.runtime import Stores
from shared.clock import RedisClock
from shared.logs import get_log
from shared.settings import Settings
from shared.supervise import cancel_and_wait
from shared.tenants import RotationNotices, tenants_collection
from webhooks.delivery import OutboxDeliverer
from webhooks.keys import NoSigningKey, TenantKeys
from webhooks.sender import Sender, attempt_deadline

log = get_log(__name__)
SWEEP_BATCH = 500
MIN_WAIT_SECONDS = 0.01


@dataclass
class Notifier:
    jobs: AsyncCollection[dict[str, Any]]
    deliverer: OutboxDeliverer
    redis: Redis
    channel: str
    clock: RedisClock
    sweep_interval_seconds: float
    concurrency: int
    _active: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    _again: set[str] = field(default_factory=set)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _sleep_until: float = 0.0
    """Redis-clock time the sweep loop sleeps until."""

    def __post_init__(self) -> None:
        self._slots = asyncio.Semaphore(self.concurrency)

    def ring(self, job_id: str) -> None:
        """Look at this job's outbox soon; one task per job keeps its events in order."""
        if job_id in self._active:
            self._again.add(job_id)  # an event arrived while delivering: look again
            return
        task = asyncio.create_task(self._deliver(job_id), name=f"deliver:{job_id}")
        self._active[job_id] = task

    def due_at(self, moment: datetime) -> None:
        """An outbox is due at ``moment``: wake the sweep loop early if it sleeps past it."""
        if moment.timestamp() < self._sleep_until:
            self._wake.set()

    async def _deliver(self, job_id: str) -> None:
        earliest: datetime | None = None
        try:
            while True:
                self._again.discard(job_id)
                async with self._slots:
                    next_due = await self.deliverer.deliver(job_id)
                # NOTE: a second look (rung again meanwhile) finds nothing due and says
                # None: keep the retry time the first look scheduled.
                if next_due is not None and (earliest is None or next_due < earliest):
                    earliest = next_due
                if job_id not in self._again:
                    break
            if earliest is not None:
                self.due_at(earliest)
        except NoSigningKey as exc:
            # NOTE: never signed with another tenant's keys: the lease expires and the
            # sweep tries again (a rotation or a repaired secret lets it through).
            log.error("notifier.no_signing_key", jobId=job_id, tenant=exc.tenant)
        except (PyMongoError, OSError) as exc:
            log.warning("notifier.delivery_deferred", jobId=job_id, error=str(exc))
        except Exception as exc:
            # NOTE: never silent: the outbox keeps the event, its lease expires and the
            # sweep tries again; the traceback says why it failed.
            log.exception("notifier.delivery_failed", jobId=job_id, error=str(exc))
        finally:
            self._active.pop(job_id, None)

    async def listen(self) -> None:
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                # NOTE: doorbells rung while we were not listening are lost: sweep now.
                self._wake.set()
                async for message in pubsub.listen():
                    try:
                        self.ring(json.loads(message["data"])["jobId"])
                    except (ValueError, KeyError, TypeError):
                        log.warning("notifier.bad_event", data=str(message["data"])[:200])
            except (RedisError, OSError, UnicodeDecodeError) as exc:
                # NOTE: a message that is not UTF-8 breaks the decoding connection: start
                # a new one; the sweep delivers whatever rang meanwhile.
                log.warning("notifier.doorbell_lost", error=str(exc))
                await asyncio.sleep(1)
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def sweep(self) -> int:
        """Ring for every job whose outbox is due."""
        due = await self.jobs.find({"outbox_due_at": {"$lte": self.clock.now()}},
                                   {"_id": 1}).sort("outbox_due_at", 1).limit(
            SWEEP_BATCH).to_list()
        for doc in due:
            self.ring(doc["_id"])
        return len(due)

    async def _seconds_to_next_due(self) -> float:
        """Until the earliest outbox due in the future, at most the sweep interval."""
        nxt = await self.jobs.find_one({"outbox_due_at": {"$gt": self.clock.now()}},
                                       {"outbox_due_at": 1}, sort=[("outbox_due_at", 1)])
        wait = self.sweep_interval_seconds
        if nxt is not None:
            wait = min(wait, nxt["outbox_due_at"].timestamp() - self.clock.timestamp())
        return max(MIN_WAIT_SECONDS, wait)

    async def run(self, stop: asyncio.Event) -> None:
        """Sweep and listen until ``stop``; raises if the listener dies (the process
        must not live on deaf)."""
        try:
            async with asyncio.TaskGroup() as group:
                listener = group.create_task(self.listen(), name="doorbell")
                try:
                    await self._sweep_loop(stop)
                finally:
                    await cancel_and_wait([listener])
        finally:
            await asyncio.gather(*self._active.values(), return_exceptions=True)

    async def _sweep_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            # NOTE: from here until the sleep starts, any newly due outbox wakes it.
            self._wake.clear()
            self._sleep_until = math.inf
            wait = self.sweep_interval_seconds
            try:
                await self.sweep()
                wait = await self._seconds_to_next_due()
            except (PyMongoError, OSError) as exc:
                log.warning("notifier.sweep_failed", error=str(exc))
            self._sleep_until = self.clock.timestamp() + wait
            stopping = asyncio.create_task(stop.wait())
            woken = asyncio.create_task(self._wake.wait())
            await asyncio.wait([stopping, woken], timeout=wait,
                               return_when=asyncio.FIRST_COMPLETED)
            for task in (stopping, woken):
                task.cancel()


def make_notifier(settings: Settings, stores: Stores, client: httpx.AsyncClient,
                  keys: list[bytes]) -> Notifier:
    """A notifier sending through ``client`` (an OutboundClient guarded by
    ``webhook_allowed_hosts``), signing with each job's tenant's secrets; ``keys`` are
    the default tenant's (``JOBQUEUE_WEBHOOK_SECRET``)."""
    tenant_keys = TenantKeys(tenants_collection(stores.jobs.database), keys,
                             settings.webhook_secrets_refresh_seconds, stores.clock.now,
                             RotationNotices(stores.redis, settings.redis_prefix))
    sender = Sender(client, tenant_keys, attempt_deadline(settings.webhook_timeout_seconds,
                                                          settings.webhook_lease_seconds))
    deliverer = OutboxDeliverer(stores.jobs, stores.deliveries, sender, stores.clock,
                                settings.webhook_retry_schedule,
                                settings.webhook_lease_seconds)
    return Notifier(stores.jobs, deliverer, stores.redis, stores.queue.keys.events_channel,
                    stores.clock, settings.webhook_sweep_interval_seconds,
                    settings.webhook_concurrency)
