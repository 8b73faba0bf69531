"""The live-status fan-out: one Redis subscription per API process, shared by every SSE
watcher.

The subscriber reads the events channel, parses each message once, and offers it to the
watchers of that message's job, each through its own small bounded buffer. Offering
never waits: a watcher whose buffer is full has its events dropped and is marked *lost*,
which tells it to re-read the job from MongoDB (the source of truth) instead of slowing
the fan-out for everyone else. Every (re)subscription marks every watcher lost too:
events published while the subscription was down were never seen.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.backoff import next_delay
from shared.logs import get_log

log = get_log(__name__)

BUFFER_EVENTS = 64  # far more than one job's transitions between two reads of its stream
POLL_SECONDS = 5.0  # lets the client's health check ping a quiet subscription
RECONNECT_BASE_SECONDS = 0.1
RECONNECT_MAX_SECONDS = 5.0
MONGO_READS = 8  # watchers reading MongoDB at once (a reconnect makes them all re-read)


@dataclass
class Batch:
    """What a watcher was handed since it last looked."""

    events: list[dict[str, Any]]
    lost: bool  # some events were dropped: re-read the job before using ``events``


@dataclass(eq=False)
class Watch:
    """One watcher of one job."""

    job_id: str
    tenant: str = ""
    """Whose share of the process's watchers this one uses (the caller's tenant)."""
    capacity: int = BUFFER_EVENTS
    _buffer: deque[dict[str, Any]] = field(default_factory=deque, init=False)
    _lost: bool = field(default=False, init=False)
    _ready: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    def offer(self, event: dict[str, Any]) -> None:
        """Buffer an event, or, when the buffer is full, drop it and mark the watch lost."""
        if len(self._buffer) >= self.capacity:
            self.mark_lost()
        else:
            self._buffer.append(event)
            self._ready.set()

    def mark_lost(self) -> None:
        # NOTE: what was buffered is dropped too: re-reading the job covers it.
        self._buffer.clear()
        self._lost = True
        self._ready.set()

    async def take(self) -> Batch:
        """Wait for what was offered since the last take. Safe to cancel: a cancelled
        wait takes nothing."""
        await self._ready.wait()
        self._ready.clear()
        batch = Batch(list(self._buffer), self._lost)
        self._buffer.clear()
        self._lost = False
        return batch


class Watchers:
    """The registry of watchers by job id, and the one subscriber that feeds them."""

    def __init__(self, redis: Redis, channel: str, max_watchers: int,
                 max_per_tenant: int | None = None) -> None:
        self._redis = redis
        self._channel = channel
        self.max_watchers = max_watchers
        self.max_per_tenant = max_per_tenant or max_watchers
        self._by_job: dict[str, set[Watch]] = {}
        self._by_tenant: dict[str, int] = {}
        self._count = 0
        self.subscribed = False
        # NOTE: watchers read MongoDB through this, so a burst of them (many streams
        # opening, or all re-reading after a resubscription) leaves the connection pool
        # to submits, cancels and /readyz.
        self.mongo_reads = asyncio.Semaphore(MONGO_READS)

    def __len__(self) -> int:
        return self._count

    @property
    def jobs_watched(self) -> int:
        return len(self._by_job)

    def of_tenant(self, tenant: str) -> int:
        """The watchers ``tenant``'s callers hold in this process."""
        return self._by_tenant.get(tenant, 0)

    def tenant_full(self, tenant: str) -> bool:
        """Has ``tenant`` used up its share of this process's watchers?"""
        return self.of_tenant(tenant) >= self.max_per_tenant

    def watch(self, job_id: str, tenant: str = "") -> Watch | None:
        """Register a watcher of ``job_id`` for ``tenant``, or None when the process has
        its maximum or the tenant its share (see :meth:`tenant_full`)."""
        if self._count >= self.max_watchers or self.tenant_full(tenant):
            return None
        watch = Watch(job_id, tenant)
        self._by_job.setdefault(job_id, set()).add(watch)
        self._by_tenant[tenant] = self.of_tenant(tenant) + 1
        self._count += 1
        return watch

    def release(self, watch: Watch) -> None:
        """Forget a watcher (idempotent)."""
        watches = self._by_job.get(watch.job_id)
        if watches is None or watch not in watches:
            return
        watches.remove(watch)
        self._count -= 1
        left = self._by_tenant[watch.tenant] - 1
        if left:
            self._by_tenant[watch.tenant] = left
        else:
            del self._by_tenant[watch.tenant]
        if not watches:
            del self._by_job[watch.job_id]

    def dispatch(self, data: str) -> None:
        """Hand one published event to the watchers of its job."""
        try:
            event = json.loads(data)
        except ValueError:
            event = None
        if not _well_formed(event):
            log.warning("watchers.bad_event", data=str(data)[:200])
            return
        for watch in self._by_job.get(event["jobId"], ()):
            watch.offer(event)

    def lose_all(self) -> None:
        for watches in self._by_job.values():
            for watch in watches:
                watch.mark_lost()

    async def run(self) -> None:
        """Subscribe and fan out until cancelled; on a Redis error subscribe again after
        a backoff. Errors other than Redis's propagate (see shared.supervise)."""
        failures = 0
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                while True:
                    try:
                        message = await pubsub.get_message(timeout=POLL_SECONDS)
                    except UnicodeDecodeError as exc:  # anyone may publish any bytes
                        log.warning("watchers.bad_event", error=str(exc))
                        continue
                    if message is None:
                        continue
                    if message["type"] == "message":
                        self.dispatch(message["data"])
                    elif message["type"] == "subscribe":
                        # NOTE: Redis confirms a subscription once it is in place; the
                        # client also resubscribes by itself after a dropped connection.
                        # Either way what was published before this point was missed.
                        failures = 0
                        self.subscribed = True
                        self.lose_all()
            except (RedisError, OSError) as exc:
                self.subscribed = False
                failures += 1
                delay = next_delay(failures, RECONNECT_BASE_SECONDS, RECONNECT_MAX_SECONDS)
                log.warning("watchers.subscription_lost", error=str(exc),
                            errorType=type(exc).__name__, retryInSeconds=round(delay, 3))
                await asyncio.sleep(delay)
            finally:
                await _close_quietly(pubsub)


def _well_formed(event: Any) -> bool:
    """Enough of an event for a stream to use it (anyone may publish on the channel)."""
    return (isinstance(event, dict) and isinstance(event.get("jobId"), str)
            and type(event.get("seq")) is int and isinstance(event.get("status"), str)
            and isinstance(event.get("type"), str))


async def _close_quietly(pubsub: Any) -> None:
    try:
        await pubsub.aclose()
    except (RedisError, OSError) as exc:
        log.warning("watchers.close_failed", error=str(exc))
