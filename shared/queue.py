"""The Redis side of the queue: the only module that touches the queue's keys.

Ready jobs wait in lanes: one stream per (priority, tenant), each read through the
consumer group ``workers``. Readers take priorities strictly in order and, within a
priority, go round the lanes that have unread entries (the priority's ready set), one
share per lane per turn, so one tenant's backlog never starves another's. A worker's
entries stay pending (owned) until their outcome is in MongoDB; only then are they
acknowledged and deleted. Delayed jobs wait in a sorted set scored by run time. The
``held`` hash names, per job, its newest stream entry, so the reconciler can tell which
jobs Redis has lost (no entry, or an entry that is no longer in its stream).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

from shared.keys import CONSUMER_GROUP, RECLAIMER, Keys, Lane
from shared.status import PRIORITIES_IN_READ_ORDER, Priority
from shared.tenants import DEFAULT_TENANT


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
    tenant: str = DEFAULT_TENANT

    @property
    def lane(self) -> Lane:
        return Lane(self.priority, self.tenant)


@dataclass(frozen=True)
class Enqueue:
    job_id: str
    priority: Priority
    run_at_ms: int | None = None
    """Set for a delayed job: it goes to the scheduled set, not a stream."""
    prev: str | None = None
    """For a PROCESSING job whose entry Redis lost: the entry id its run had claimed."""
    tenant: str = DEFAULT_TENANT


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
    tenant: str = DEFAULT_TENANT


def scheduled_member(job_id: str, priority: Priority | str,
                     tenant: str = DEFAULT_TENANT) -> str:
    """The job's member in the delayed set: ``priority:tenant:job``, or ``priority:job``
    for the default tenant (the form members had before lanes)."""
    p = Priority(priority).value
    return f"{p}:{job_id}" if tenant == DEFAULT_TENANT else f"{p}:{tenant}:{job_id}"


def member_job_id(member: str) -> str:
    # NOTE: job ids, tenant names and priorities hold no ':'.
    return member.rsplit(":", 1)[-1]


def member_lane(member: str) -> Lane:
    """The lane a delayed-set member goes to when due (an unknown priority: default)."""
    parts = member.split(":")
    try:
        priority = Priority(parts[0])
    except ValueError:
        priority = Priority.DEFAULT
    return Lane(priority, parts[1] if len(parts) == 3 else DEFAULT_TENANT)


class _ScriptKeys:
    """KEYS for a script: fixed keys first, then each lane used once (its stream, and
    with ``ready`` its priority's ready set right after), addressed by 1-based index."""

    def __init__(self, keys: Keys, *fixed: str, ready: bool = True) -> None:
        self._keys = keys
        self._ready = ready
        self.list = list(fixed)
        self._index: dict[Lane, int] = {}

    def lane(self, lane: Lane) -> int:
        index = self._index.get(lane)
        if index is None:
            self.list.append(self._keys.lane_stream(lane))
            index = self._index[lane] = len(self.list)
            if self._ready:
                self.list.append(self._keys.ready(lane.priority))
        return index


class RedisQueue:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._read = _script(redis, "read")
        self._enqueue = _script(redis, "enqueue")
        self._settle = _script(redis, "settle")
        self._promote = _script(redis, "promote")
        self._claim_stale = _script(redis, "claim_stale")
        self._requeue = _script(redis, "requeue")
        self._leader = _script(redis, "leader")

    # -- set-up ---------------------------------------------------------------------------

    async def ensure_groups(self) -> None:
        """Create the default tenant's lanes and their consumer group if missing (first
        start, or after Redis lost its data), and mark them ready: entries written there
        before lanes existed, or added behind the scripts' backs, are read too. Other
        lanes are created by the scripts that first add to them."""
        for stream in self.keys.streams():
            try:
                await self.redis.xgroup_create(stream, CONSUMER_GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        pipe = self.redis.pipeline(transaction=False)
        pipe.sadd(self.keys.lanes, *self.keys.streams())
        for priority, stream in zip(PRIORITIES_IN_READ_ORDER, self.keys.streams(),
                                    strict=True):
            pipe.zadd(self.keys.ready(priority), {stream: 0})
        await pipe.execute()

    async def lanes(self) -> list[Lane]:
        """Every lane there is (the default tenant's always), in read order."""
        streams: Any = await self.redis.smembers(self.keys.lanes)
        lanes = {self.keys.lane_of(s) for s in streams}
        lanes.update(Lane(p) for p in PRIORITIES_IN_READ_ORDER)
        return sorted(lanes, key=lambda lane: (
            PRIORITIES_IN_READ_ORDER.index(lane.priority), lane.tenant))

    # -- producers ------------------------------------------------------------------------

    async def enqueue(self, jobs: Sequence[Enqueue], events: Iterable[str] = ()) -> None:
        """Add jobs to their lanes (or the delayed set) and ring the event doorbell, in
        one atomic round trip."""
        events = list(events)
        if not jobs and not events:
            return
        keys = _ScriptKeys(self.keys, self.keys.scheduled, self.keys.held, self.keys.lanes,
                           self.keys.doorbell)
        args: list[Any] = [CONSUMER_GROUP, self.keys.events_channel, len(jobs)]
        for job in jobs:
            delayed = job.run_at_ms is not None
            args += [0 if delayed else keys.lane(Lane(Priority(job.priority), job.tenant)),
                     job.job_id, job.prev or "", job.run_at_ms if delayed else "",
                     scheduled_member(job.job_id, job.priority, job.tenant) if delayed
                     else ""]
        await self._enqueue(keys=keys.list, args=[*args, *events])

    async def publish(self, events: Iterable[str]) -> None:
        events = list(events)
        if not events:
            return
        pipe = self.redis.pipeline(transaction=False)
        for event in events:
            pipe.publish(self.keys.events_channel, event)
        await pipe.execute()

    async def unschedule(self, job_id: str, priority: Priority | str,
                         tenant: str = DEFAULT_TENANT) -> None:
        await self.redis.zrem(self.keys.scheduled, scheduled_member(job_id, priority, tenant))

    # -- workers --------------------------------------------------------------------------

    async def read(self, consumer: str, count: int, block_ms: int | None) -> list[Delivery]:
        """Up to ``count`` new entries, strictly high priority first and round-robin
        across the lanes (tenants) of a priority, in one round trip.

        When no lane has a new entry and ``block_ms`` is set, wait up to that long for
        the ready doorbell (rung by every enqueue, promotion and requeue), then read
        once more.
        """
        bell, rows = await self._read_ready(consumer, count)
        if not rows and block_ms is not None:
            rung: Any = await self.redis.xread({self.keys.doorbell: bell}, count=1,
                                               block=block_ms)
            if rung:
                _, rows = await self._read_ready(consumer, count)
        deliveries = []
        for stream, entry_id, flat in rows:
            fields = dict(zip(flat[::2], flat[1::2], strict=True))
            lane = self.keys.lane_of(stream)
            deliveries.append(Delivery(entry_id=entry_id, priority=lane.priority,
                                       job_id=fields["job"], deliveries=int(fields.get("n", 1)),
                                       prev=fields.get("prev"), tenant=lane.tenant))
        return sorted(deliveries, key=lambda d: PRIORITIES_IN_READ_ORDER.index(d.priority))

    async def _read_ready(self, consumer: str, count: int) -> tuple[str, list[Any]]:
        keys = [*(self.keys.ready(p) for p in PRIORITIES_IN_READ_ORDER),
                *(self.keys.rotation(p) for p in PRIORITIES_IN_READ_ORDER),
                self.keys.doorbell]
        bell, rows = await self._read(keys=keys, args=[CONSUMER_GROUP, consumer, count])
        return bell, rows

    async def touch(self, consumer: str, deliveries: Iterable[Delivery]) -> None:
        """Heartbeat: reset the idle time of entries this worker still runs, so the
        reclaimer does not take a long job from a live worker."""
        by_stream: dict[str, list[Any]] = {}
        for d in deliveries:
            by_stream.setdefault(self.keys.lane_stream(d.lane), []).append(d.entry_id)
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
        keys = _ScriptKeys(self.keys, self.keys.scheduled, self.keys.held, ready=False)
        args: list[Any] = [CONSUMER_GROUP, self.keys.events_channel, len(settles)]
        for s in settles:
            d = s.delivery
            retry = s.retry_at_ms is not None
            args += [keys.lane(d.lane), d.entry_id, d.job_id,
                     s.retry_at_ms if retry else "",
                     scheduled_member(d.job_id, d.priority, d.tenant) if retry else ""]
        await self._settle(keys=keys.list, args=[*args, *events])

    async def defer(self, delivery: Delivery, run_at_ms: int) -> None:
        """Give an unstarted entry back until ``run_at_ms``: acknowledge and delete it and
        park its job in the delayed set, from which it is promoted to its lane again (its
        MongoDB status stays QUEUED; :meth:`lost` counts the parked job as held)."""
        await self.settle([Settle(delivery, retry_at_ms=run_at_ms)])

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
        keys = _ScriptKeys(self.keys, self.keys.scheduled, self.keys.held, self.keys.lanes,
                           self.keys.doorbell)
        args: list[Any] = [CONSUMER_GROUP]
        for member in members:
            args += [member, keys.lane(member_lane(member)), member_job_id(member)]
        return int(await self._promote(keys=keys.list, args=args))

    async def drop_scheduled(self, members: Sequence[str]) -> None:
        if members:
            await self.redis.zrem(self.keys.scheduled, *members)

    async def claim_stale(self, cursors: dict[Lane, str], min_idle_ms: int, count: int
                          ) -> tuple[dict[Lane, str], list[Delivery]]:
        """Take over up to ``count`` entries per lane idle past ``min_idle_ms`` (their
        worker died), scanning each lane's pending entries from its cursor, all in one
        pipelined round trip; return each lane's cursor for the next page ("0-0" once
        its scan went round) and the entries."""
        lanes = list(cursors)
        pipe = self.redis.pipeline(transaction=False)
        for lane in lanes:
            await self._claim_stale(
                keys=[self.keys.lane_stream(lane)],
                args=[CONSUMER_GROUP, RECLAIMER, min_idle_ms, count, cursors[lane]],
                client=pipe)
        replies = await pipe.execute(raise_on_error=False)
        next_cursors: dict[Lane, str] = {}
        stale = []
        for lane, reply in zip(lanes, replies, strict=True):
            if isinstance(reply, ResponseError):
                if "NOGROUP" not in str(reply):
                    raise reply
                next_cursors[lane] = "0-0"  # the lane is gone; ensure_groups remakes ours
                continue
            next_cursors[lane], rows = reply
            for entry_id, flat in rows:
                fields = dict(zip(flat[::2], flat[1::2], strict=True))
                stale.append(Delivery(entry_id=entry_id, priority=lane.priority,
                                      job_id=fields["job"], deliveries=int(fields.get("n", 1)),
                                      prev=fields.get("prev"), tenant=lane.tenant))
        return next_cursors, stale

    async def requeue(self, deliveries: Sequence[Delivery]) -> int:
        """Hand claimed stale entries back to the workers as fresh entries in their lanes;
        each names in ``prev`` the entry its job's dead run claimed (None if never
        claimed)."""
        if not deliveries:
            return 0
        keys = _ScriptKeys(self.keys, self.keys.held, self.keys.doorbell)
        args: list[Any] = [CONSUMER_GROUP]
        for d in deliveries:
            args += [keys.lane(d.lane), d.entry_id, d.job_id, d.deliveries, d.prev or ""]
        return int(await self._requeue(keys=keys.list, args=args))

    async def lost(self, waiting: Sequence[Waiting]) -> list[Waiting]:
        """Which of these jobs Redis does not hold, in two pipelined round trips.

        A delayed job is lost when it is not in the delayed set. A ready (QUEUED) job is
        lost when no entry of its is in its lane and it is not parked in the delayed set
        either (see :meth:`defer`); a PROCESSING job when neither its newest entry nor
        the entry its run claimed is (an entry stays in the stream until it is settled,
        pending or not).
        """
        if not waiting:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for w in waiting:
            pipe.zscore(self.keys.scheduled, scheduled_member(w.job_id, w.priority, w.tenant))
            pipe.hget(self.keys.held, w.job_id)
        first: list[Any] = await pipe.execute()
        probes: list[tuple[Waiting, list[str]]] = []
        lost = []
        for index, w in enumerate(waiting):
            parked, held = first[2 * index], first[2 * index + 1]
            if w.delayed or parked is not None:
                if parked is None:
                    lost.append(w)
                continue
            entries = [e for e in (held, w.claim) if e]
            if entries:
                probes.append((w, entries))
            else:
                lost.append(w)
        pipe = self.redis.pipeline(transaction=False)
        for w, entries in probes:
            for entry in entries:
                pipe.xrange(self.keys.stream(w.priority, w.tenant), entry, entry)
        found: list[Any] = await pipe.execute() if probes else []
        for w, entries in probes:
            present = [found.pop(0) for _ in entries]
            if not any(present):
                lost.append(w)
        return lost

    async def hold_leadership(self, token: str, lease_ms: int) -> bool:
        return bool(await self._leader(keys=[self.keys.leader], args=[token, lease_ms]))

    # -- housekeeping ---------------------------------------------------------------------

    async def delete_idle_consumers(self, streams: Sequence[str], idle_ms: int) -> int:
        """Delete, on each of these streams, the consumers of the workers' group that own
        no pending entry and were idle over ``idle_ms`` (workers that are gone); return
        how many. See drop_idle_consumers.lua."""
        if not streams:
            return 0
        script = _script(self.redis, "drop_idle_consumers")
        pipe = self.redis.pipeline(transaction=False)
        for stream in streams:
            await script(keys=[stream], args=[CONSUMER_GROUP, idle_ms], client=pipe)
        return sum(int(n) for n in await pipe.execute())

    # -- per-type limits ------------------------------------------------------------------

    async def wake(self, members: Mapping[str, float]) -> list[str]:
        """Make these delayed-set members due now, each with its score (its place in
        line, a small number: long past as a time, so woken jobs are promoted at once and
        in that order); return those
        woken. A member no longer there (promoted, or its job cancelled or deleted) is
        skipped, not added."""
        if not members:
            return []
        pipe = self.redis.pipeline(transaction=True)
        pipe.zmscore(self.keys.scheduled, list(members))
        pipe.zadd(self.keys.scheduled, dict(members), xx=True)
        present, _ = await pipe.execute()
        return [m for m, score in zip(members, present, strict=True) if score is not None]
