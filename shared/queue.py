"""The Redis side of the queue: the only module that touches the queue's keys.

Ready jobs wait in one stream per priority, read through the consumer group ``workers``.
A worker's entries stay pending (owned) until their outcome is in MongoDB; only then are
they acknowledged and deleted. Delayed jobs wait in a sorted set scored by run time.
The ``held`` set names the jobs that have a stream entry, so the reconciler can tell
which jobs Redis has lost.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

from shared.keys import CONSUMER_GROUP, RECLAIMER, Keys
from shared.status import PRIORITIES_IN_READ_ORDER, Priority


def _script(redis: Redis, name: str) -> AsyncScript:
    return redis.register_script(files("shared.lua").joinpath(f"{name}.lua").read_text())


@dataclass(frozen=True)
class Delivery:
    """One stream entry handed to a worker."""

    entry_id: str
    priority: Priority
    job_id: str
    deliveries: int = 1
    prev: str | None = None
    """For a redelivery after a worker died: the entry id the dead run had claimed."""


@dataclass(frozen=True)
class Enqueue:
    job_id: str
    priority: Priority
    run_at_ms: int | None = None
    """Set for a delayed job: it goes to the scheduled set, not a stream."""
    prev: str | None = None
    """For a PROCESSING job whose entry Redis lost: the entry id its run had claimed."""


@dataclass(frozen=True)
class Settle:
    """What to do in Redis once a run's outcome is stored."""

    delivery: Delivery
    release: bool = True
    """Drop the job from ``held``: false when another entry may still own it."""
    retry_at_ms: int | None = None


def scheduled_member(job_id: str, priority: Priority | str) -> str:
    return f"{Priority(priority).value}:{job_id}"


def member_job_id(member: str) -> str:
    return member.split(":", 1)[1]


class RedisQueue:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._stream_priority = {keys.stream(p): p for p in PRIORITIES_IN_READ_ORDER}
        self._read = _script(redis, "read")
        self._promote = _script(redis, "promote")
        self._claim_stale = _script(redis, "claim_stale")
        self._requeue = _script(redis, "requeue")
        self._leader = _script(redis, "leader")

    # -- set-up ---------------------------------------------------------------------------

    async def ensure_groups(self) -> None:
        """Create the streams and consumer group if missing (first start, or after Redis
        lost its data)."""
        for stream in self.keys.streams():
            try:
                await self.redis.xgroup_create(stream, CONSUMER_GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    # -- producers ------------------------------------------------------------------------

    async def enqueue(self, jobs: Sequence[Enqueue], events: Iterable[str] = ()) -> None:
        """Add jobs to their streams (or the delayed set) and ring the event doorbell, in
        one atomic round trip."""
        pipe = self.redis.pipeline(transaction=True)
        for job in jobs:
            if job.run_at_ms is None:
                fields: dict[Any, Any] = {"job": job.job_id,
                                          **({"prev": job.prev} if job.prev else {})}
                pipe.xadd(self.keys.stream(job.priority), fields)
                pipe.sadd(self.keys.held, job.job_id)
            else:
                pipe.zadd(self.keys.scheduled,
                          {scheduled_member(job.job_id, job.priority): job.run_at_ms})
        for event in events:
            pipe.publish(self.keys.events_channel, event)
        await pipe.execute()

    async def publish(self, events: Iterable[str]) -> None:
        events = list(events)
        if not events:
            return
        pipe = self.redis.pipeline(transaction=False)
        for event in events:
            pipe.publish(self.keys.events_channel, event)
        await pipe.execute()

    async def unschedule(self, job_id: str, priority: Priority | str) -> None:
        await self.redis.zrem(self.keys.scheduled, scheduled_member(job_id, priority))

    # -- workers --------------------------------------------------------------------------

    async def read(self, consumer: str, count: int, block_ms: int | None) -> list[Delivery]:
        """Up to ``count`` new entries, strictly high priority first, in one round trip.

        When all streams are empty and ``block_ms`` is set, wait that long for new
        entries; that wait may return a few from each stream (callers order them).
        """
        try:
            rows = await self._read(keys=self.keys.streams(),
                                    args=[CONSUMER_GROUP, consumer, count])
            if not rows and block_ms is not None:
                reply: Any = await self.redis.xreadgroup(
                    CONSUMER_GROUP, consumer, dict.fromkeys(self.keys.streams(), ">"),
                    count=count, block=block_ms)
                rows = [[stream, entry_id, [x for kv in fields.items() for x in kv]]
                        for stream, entries in reply or [] for entry_id, fields in entries]
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self.ensure_groups()
            return []
        deliveries = []
        for stream, entry_id, flat in rows:
            fields = dict(zip(flat[::2], flat[1::2], strict=True))
            deliveries.append(Delivery(entry_id=entry_id,
                                       priority=self._stream_priority[stream],
                                       job_id=fields["job"], deliveries=int(fields.get("n", 1)),
                                       prev=fields.get("prev")))
        return sorted(deliveries, key=lambda d: PRIORITIES_IN_READ_ORDER.index(d.priority))

    async def touch(self, consumer: str, deliveries: Iterable[Delivery]) -> None:
        """Heartbeat: reset the idle time of entries this worker still runs, so the
        reclaimer does not take a long job from a live worker."""
        by_stream: dict[str, list[Any]] = {}
        for d in deliveries:
            by_stream.setdefault(self.keys.stream(d.priority), []).append(d.entry_id)
        if not by_stream:
            return
        pipe = self.redis.pipeline(transaction=False)
        for stream, ids in by_stream.items():
            pipe.xclaim(stream, CONSUMER_GROUP, consumer, 0, ids, justid=True)
        await pipe.execute()

    async def settle(self, settles: Sequence[Settle], events: Iterable[str] = ()) -> None:
        """Acknowledge and delete finished entries, park retries in the delayed set and
        publish the events, in one atomic round trip. Call only after MongoDB has the
        outcome."""
        pipe = self.redis.pipeline(transaction=True)
        for s in settles:
            d = s.delivery
            if s.retry_at_ms is not None:
                pipe.zadd(self.keys.scheduled,
                          {scheduled_member(d.job_id, d.priority): s.retry_at_ms})
            stream = self.keys.stream(d.priority)
            pipe.xack(stream, CONSUMER_GROUP, d.entry_id)
            pipe.xdel(stream, d.entry_id)
            if s.release:
                pipe.srem(self.keys.held, d.job_id)
        for event in events:
            pipe.publish(self.keys.events_channel, event)
        await pipe.execute()

    async def request_cancel(self, job_id: str) -> None:
        await self.redis.publish(self.keys.cancel_channel, job_id)

    # -- scheduler ------------------------------------------------------------------------

    async def now_ms(self) -> int:
        seconds, micros = await self.redis.time()
        return int(seconds * 1000 + micros // 1000)

    async def due(self, now_ms: int, limit: int) -> list[str]:
        """Members of the delayed set whose time has come, oldest first."""
        members: Any = await self.redis.zrangebyscore(
            self.keys.scheduled, "-inf", now_ms, start=0, num=limit)
        return list(members)

    async def promote(self, members: Sequence[str]) -> int:
        if not members:
            return 0
        keys = [self.keys.scheduled, self.keys.held, *self.keys.streams()]
        return int(await self._promote(keys=keys, args=list(members)))

    async def drop_scheduled(self, members: Sequence[str]) -> None:
        if members:
            await self.redis.zrem(self.keys.scheduled, *members)

    async def claim_stale(self, min_idle_ms: int, count: int) -> list[Delivery]:
        """Take over entries idle past ``min_idle_ms`` (their worker died)."""
        stale: list[Delivery] = []
        for stream, priority in self._stream_priority.items():
            try:
                rows = await self._claim_stale(
                    keys=[stream], args=[CONSUMER_GROUP, RECLAIMER, min_idle_ms, count])
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                await self.ensure_groups()
                continue
            for entry_id, flat in rows:
                fields = dict(zip(flat[::2], flat[1::2], strict=True))
                stale.append(Delivery(entry_id=entry_id, priority=priority,
                                      job_id=fields["job"],
                                      deliveries=int(fields.get("n", 1)),
                                      prev=fields.get("prev")))
        return stale

    async def requeue(self, deliveries: Sequence[Delivery]) -> int:
        """Hand claimed stale entries back to the workers as fresh entries; each names in
        ``prev`` the entry its job's dead run claimed (None if never claimed)."""
        if not deliveries:
            return 0
        args: list[Any] = [CONSUMER_GROUP]
        for d in deliveries:
            args += [PRIORITIES_IN_READ_ORDER.index(d.priority) + 1, d.entry_id, d.job_id,
                     d.deliveries, d.prev or ""]
        return int(await self._requeue(keys=self.keys.streams(), args=args))

    async def missing(self, queued: Sequence[str],
                      scheduled: Sequence[tuple[str, Priority]]) -> tuple[list[str], list[str]]:
        """Which of these QUEUED job ids have no stream entry, and which SCHEDULED jobs
        are not in the delayed set."""
        pipe = self.redis.pipeline(transaction=False)
        if queued:
            pipe.smismember(self.keys.held, list(queued))
        if scheduled:
            pipe.zmscore(self.keys.scheduled,
                         [scheduled_member(j, p) for j, p in scheduled])
        replies: list[Any] = await pipe.execute() if (queued or scheduled) else []
        lost_queued = ([j for j, held in zip(queued, replies.pop(0), strict=True) if not held]
                       if queued else [])
        lost_scheduled = ([j for (j, _), score in zip(scheduled, replies.pop(0), strict=True)
                           if score is None] if scheduled else [])
        return lost_queued, lost_scheduled

    async def hold_leadership(self, token: str, lease_ms: int) -> bool:
        return bool(await self._leader(keys=[self.keys.leader], args=[token, lease_ms]))
