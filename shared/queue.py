"""The Redis side of the queue: the only module that touches the queue's keys.

Ready jobs wait in one stream per priority, read through the consumer group ``workers``.
A worker's entries stay pending (owned) until their outcome is in MongoDB; only then are
they acknowledged and deleted. Delayed jobs wait in a sorted set scored by run time.
The ``held`` hash names, per job, its newest stream entry, so the reconciler can tell
which jobs Redis has lost (no entry, or an entry that is no longer in its stream).
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
    """What to do in Redis once a run's outcome is stored: acknowledge and delete its
    entry (``held`` forgets the job only while it names this entry), and park a retry."""

    delivery: Delivery
    retry_at_ms: int | None = None


@dataclass(frozen=True)
class Waiting:
    """A job MongoDB says must be waiting in Redis, for :meth:`RedisQueue.lost`."""

    job_id: str
    priority: Priority
    claim: str | None = None
    """For a PROCESSING job: the entry its run claimed."""
    delayed: bool = False


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
        self._enqueue = _script(redis, "enqueue")
        self._settle = _script(redis, "settle")
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

    def _stream_index(self, priority: Priority | str) -> int:
        return PRIORITIES_IN_READ_ORDER.index(Priority(priority)) + 1

    def _queue_keys(self) -> list[str]:
        return [*self.keys.streams(), self.keys.scheduled, self.keys.held]

    async def enqueue(self, jobs: Sequence[Enqueue], events: Iterable[str] = ()) -> None:
        """Add jobs to their streams (or the delayed set) and ring the event doorbell, in
        one atomic round trip."""
        events = list(events)
        if not jobs and not events:
            return
        args: list[Any] = [self.keys.events_channel, len(jobs)]
        for job in jobs:
            args += [self._stream_index(job.priority), job.job_id, job.prev or "",
                     "" if job.run_at_ms is None else job.run_at_ms]
        await self._enqueue(keys=self._queue_keys(), args=[*args, *events])

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
        events = list(events)
        if not settles and not events:
            return
        args: list[Any] = [CONSUMER_GROUP, self.keys.events_channel, len(settles)]
        for s in settles:
            d = s.delivery
            args += [self._stream_index(d.priority), d.entry_id, d.job_id,
                     "" if s.retry_at_ms is None else s.retry_at_ms]
        await self._settle(keys=self._queue_keys(), args=[*args, *events])

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

    async def claim_stale(self, priority: Priority, cursor: str, min_idle_ms: int,
                          count: int) -> tuple[str, list[Delivery]]:
        """Take over up to ``count`` entries of one stream idle past ``min_idle_ms`` (their
        worker died), scanning its pending entries from ``cursor``; return the cursor of
        the next page ("0-0" once the scan went round) and the entries."""
        stream = self.keys.stream(priority)
        try:
            cursor, rows = await self._claim_stale(
                keys=[stream], args=[CONSUMER_GROUP, RECLAIMER, min_idle_ms, count, cursor])
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self.ensure_groups()
            return "0-0", []
        stale = []
        for entry_id, flat in rows:
            fields = dict(zip(flat[::2], flat[1::2], strict=True))
            stale.append(Delivery(entry_id=entry_id, priority=priority,
                                  job_id=fields["job"], deliveries=int(fields.get("n", 1)),
                                  prev=fields.get("prev")))
        return cursor, stale

    async def requeue(self, deliveries: Sequence[Delivery]) -> int:
        """Hand claimed stale entries back to the workers as fresh entries; each names in
        ``prev`` the entry its job's dead run claimed (None if never claimed)."""
        if not deliveries:
            return 0
        args: list[Any] = [CONSUMER_GROUP]
        for d in deliveries:
            args += [self._stream_index(d.priority), d.entry_id, d.job_id,
                     d.deliveries, d.prev or ""]
        return int(await self._requeue(keys=[*self.keys.streams(), self.keys.held],
                                       args=args))

    async def lost(self, waiting: Sequence[Waiting]) -> list[Waiting]:
        """Which of these jobs Redis does not hold, in two pipelined round trips.

        A delayed job is lost when it is not in the delayed set. A ready (QUEUED) job is
        lost when no entry of its is in its stream; a PROCESSING job when neither its
        newest entry nor the entry its run claimed is (an entry stays in the stream
        until it is settled, pending or not).
        """
        if not waiting:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for w in waiting:
            if w.delayed:
                pipe.zscore(self.keys.scheduled, scheduled_member(w.job_id, w.priority))
            else:
                pipe.hget(self.keys.held, w.job_id)
        first: list[Any] = await pipe.execute()
        probes: list[tuple[Waiting, list[str]]] = []
        lost = []
        for w, reply in zip(waiting, first, strict=True):
            if w.delayed:
                if reply is None:
                    lost.append(w)
                continue
            entries = [e for e in (reply, w.claim) if e]
            if entries:
                probes.append((w, entries))
            else:
                lost.append(w)
        pipe = self.redis.pipeline(transaction=False)
        for w, entries in probes:
            for entry in entries:
                pipe.xrange(self.keys.stream(w.priority), entry, entry)
        found: list[Any] = await pipe.execute() if probes else []
        for w, entries in probes:
            present = [found.pop(0) for _ in entries]
            if not any(present):
                lost.append(w)
        return lost

    async def hold_leadership(self, token: str, lease_ms: int) -> bool:
        return bool(await self._leader(keys=[self.keys.leader], args=[token, lease_ms]))
