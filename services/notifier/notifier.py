"""The notifier: turns job events into webhook deliveries.

Pub/sub is the doorbell (an event was published: look at that job's outbox now); the
sweep is the safety net (every few seconds, every outbox that is due), so events
published while no notifier listened, or lost on the way, are still delivered.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.clock import RedisClock
from shared.logs import get_log
from webhooks.delivery import OutboxDeliverer

log = get_log(__name__)
SWEEP_BATCH = 500


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

    def __post_init__(self) -> None:
        self._slots = asyncio.Semaphore(self.concurrency)

    def ring(self, job_id: str) -> None:
        """Look at this job's outbox soon; one task per job keeps its events in order."""
        if job_id in self._active:
            self._again.add(job_id)  # an event arrived while delivering: look again
            return
        task = asyncio.create_task(self._deliver(job_id), name=f"deliver:{job_id}")
        self._active[job_id] = task

    async def _deliver(self, job_id: str) -> None:
        try:
            while True:
                self._again.discard(job_id)
                async with self._slots:
                    await self.deliverer.deliver(job_id)
                if job_id not in self._again:
                    return
        except (PyMongoError, OSError) as exc:
            log.warning("notifier.delivery_deferred", jobId=job_id, error=str(exc))
        finally:
            self._active.pop(job_id, None)

    async def listen(self) -> None:
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                async for message in pubsub.listen():
                    try:
                        self.ring(json.loads(message["data"])["jobId"])
                    except (ValueError, KeyError, TypeError):
                        log.warning("notifier.bad_event", data=str(message["data"])[:200])
            except (RedisError, OSError) as exc:
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

    async def run(self, stop: asyncio.Event) -> None:
        listener = asyncio.create_task(self.listen(), name="doorbell")
        try:
            while not stop.is_set():
                try:
                    await self.sweep()
                except (PyMongoError, OSError) as exc:
                    log.warning("notifier.sweep_failed", error=str(exc))
                try:
                    await asyncio.wait_for(stop.wait(), self.sweep_interval_seconds)
                except TimeoutError:
                    pass
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
            await asyncio.gather(*self._active.values(), return_exceptions=True)
