"""Per-job-type limits enforced across all workers together, in Redis.

A job type may be limited to ``concurrency`` runs at once and to a ``rate`` of starts
(``@job_type(..., concurrency=5, rate="10/s")``; ``JOBQUEUE_TYPE_LIMITS`` overrides the
decorator per type). Workers ask :meth:`TypeLimiter.admit` before claiming a batch of
jobs; a job it does not admit is not claimed but handed back to wait in the delayed set
(see the worker's ``_start``), so it uses no slot and no retry.

Concurrency: one sorted set per type holds the ids of its running jobs, scored by the
time their lease runs out. ``lua/type_slots.lua`` admits a batch atomically (expired
members first: a worker that died frees its slots once their lease runs out, the
visibility timeout), the worker's heartbeat extends the leases of its runs and a run
that ends releases its slot.

A job held back by a full cap sleeps: it waits in the delayed set with a long safety-net
time, and its member joins the type's waiting line. The line is fair across tenants:
each tenant's jobs keep their order, and tenants take turns (a tenant's first held job
goes ahead of another tenant's hundredth; see ``lua/type_slots.lua``). A slot that frees
(a run released, a lease or reservation found expired) goes to the head of the line:
popped, given a reservation (the slot is kept for it, newcomers wait behind the line)
and woken, its delayed-set member made due (:meth:`shared.queue.RedisQueue.wake`), so
the scheduler promotes it to its lane at once. A backlog of a capped type thus costs one
hold per job, not a hold every second. The safety net (see :func:`safety_net`) brings
every held job back in bounded time even if no wake comes; one that comes back and is
refused keeps its place in line.

Rate: the shared GCRA limiter (:mod:`shared.ratelimit`) named ``type:<name>``, one unit
per job started. A rate's waits are exact: a job held for its rate is not in line.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.keys import (
    type_line_tags_key,
    type_reserved_key,
    type_slots_key,
    type_waiting_key,
)
from shared.logs import get_log
from shared.ratelimit import Rate, RateLimiter
from shared.settings import TypeLimitSetting
from shared.tenants import DEFAULT_TENANT

log = get_log(__name__)

BUSY_WAIT_SECONDS = (0.2, 1.0)
"""How long a takeover held back by a full concurrency cap waits with its worker before
it is tried again (uniformly in this range, so several do not return together). Other
held-back jobs sleep until woken (see the module's doc)."""
SAFETY_NET_SECONDS = 5.0
SAFETY_NET_PER_WAITING_SECONDS = 0.05
SAFETY_NET_MAX_SECONDS = 300.0
RESERVE_SECONDS = 5.0
"""How long a freed slot is kept for the job woken to take it (it must be promoted and
read by then; if it is not, the slot is free for anyone and the job, refused, rejoins its
place in line)."""
WAKE_ROUNDS = 4
"""Woken members found gone (their job cancelled or deleted) give their slot to the next
in line, at most this many times per wake."""

Waker = Callable[[Mapping[str, float]], Awaitable[list[str]]]
"""Makes delayed-set members (member -> score) due; returns those found (see
:meth:`shared.queue.RedisQueue.wake`)."""


def safety_net(waiting: int) -> float:
    """How long a job held back by a full cap sleeps if no freed slot wakes it, with
    ``waiting`` jobs of its type already in line: longer for a longer line, so a huge
    backlog does not cycle, but bounded (a worker that died holding slots frees them
    only when their leases run out, and wakes nobody)."""
    return min(SAFETY_NET_SECONDS + SAFETY_NET_PER_WAITING_SECONDS * waiting,
               SAFETY_NET_MAX_SECONDS)


@dataclass(frozen=True)
class TypeLimit:
    concurrency: int | None = None
    rate: Rate | None = None

    def __bool__(self) -> bool:
        return self.concurrency is not None or self.rate is not None

    def __str__(self) -> str:
        parts = [f"concurrency={self.concurrency}"] if self.concurrency else []
        return ", ".join(parts + ([f"rate={self.rate}"] if self.rate else []))


class Limited(Protocol):
    """What a registered job type says about its limits (shared.jobtypes.JobType)."""

    @property
    def concurrency(self) -> int | None: ...

    @property
    def rate(self) -> Rate | None: ...


def effective_limits(registry: Mapping[str, Limited],
                     overrides: Mapping[str, TypeLimitSetting]) -> dict[str, TypeLimit]:
    """Each limited type's limits: the decorator's, with each field the settings give
    (even null, which lifts that limit) in its place. Types without limits are left out;
    so are settings for types this registry does not know (see :func:`unknown_types`)."""
    limits = {}
    for name, job_type in registry.items():
        limit = TypeLimit(job_type.concurrency, job_type.rate)
        override = overrides.get(name)
        if override is not None:
            given = override.model_fields_set
            limit = TypeLimit(
                override.concurrency if "concurrency" in given else limit.concurrency,
                (Rate.parse(override.rate) if override.rate else None)
                if "rate" in given else limit.rate)
        if limit:
            limits[name] = limit
    return limits


def unknown_types(registry: Mapping[str, object],
                  overrides: Mapping[str, TypeLimitSetting]) -> list[str]:
    return sorted(set(overrides) - set(registry))


@dataclass(frozen=True)
class Candidate:
    job_id: str
    job_type: str
    force: bool = False
    """Already running in MongoDB's eyes (its claim applied, the reply was lost): it
    takes a slot even over the cap and is never held back."""
    member: str | None = None
    """Its delayed-set member, where it sleeps in line if its type's cap is full. None
    for a job that cannot wait there (a takeover): it is tried again soon instead."""
    tenant: str = DEFAULT_TENANT
    """Whose job it is: the waiting line takes tenants in turn."""


@dataclass
class Admission:
    admitted: set[str] = field(default_factory=set)
    held: dict[str, float] = field(default_factory=dict)
    """Job id -> seconds to wait before trying again."""
    sleeping: list[Candidate] = field(default_factory=list)
    """The held jobs that sleep in line for a full cap (their wait in ``held`` is the
    safety net): pass them to :meth:`TypeLimiter.wait` once they are in the delayed
    set."""


class TypeLimiter:
    def __init__(self, redis: Redis, prefix: str, limits: Mapping[str, TypeLimit],
                 lease_seconds: float, wake: Waker,
                 reserve_seconds: float = RESERVE_SECONDS) -> None:
        self.redis = redis
        self.prefix = prefix
        self.limits = dict(limits)
        self.lease_ms = max(1, round(lease_seconds * 1000))
        self.reserve_ms = max(1, round(reserve_seconds * 1000))
        self.wake = wake
        self.rates = RateLimiter(redis, prefix)
        self._slots = redis.register_script(
            files("shared.lua").joinpath("type_slots.lua").read_text())

    def limited(self, job_type: str) -> bool:
        return job_type in self.limits

    def holds_slot(self, job_type: str) -> bool:
        """True when a run of this type holds a concurrency slot while it runs."""
        limit = self.limits.get(job_type)
        return limit is not None and limit.concurrency is not None

    def _keys(self, job_type: str) -> list[str]:
        return [type_slots_key(self.prefix, job_type),
                type_reserved_key(self.prefix, job_type),
                type_waiting_key(self.prefix, job_type),
                type_line_tags_key(self.prefix, job_type)]

    async def _call(self, op: str, by_type: Mapping[str, Sequence[Any]]) -> Any:
        """Run one op of type_slots.lua; ``by_type`` gives each type's arguments after
        its limit and count (one row of them per item)."""
        keys: list[str] = []
        args: list[Any] = [op, self.lease_ms, self.reserve_ms]
        for name, rows in by_type.items():
            keys += self._keys(name)
            if op != "refresh":
                args.append(self.limits[name].concurrency)
            args.append(len(rows))
            for row in rows:
                args += row if isinstance(row, tuple) else [row]
        return await self._slots(keys=keys, args=args)

    async def admit(self, candidates: Sequence[Candidate]) -> Admission:
        """Which of these jobs may start now (each admitted one with a concurrency slot,
        if its type has a cap, and a unit of its type's rate) and how long the others
        must wait. Candidates of types without limits are admitted as they are."""
        result = Admission()
        by_type: dict[str, list[Candidate]] = {}
        for c in candidates:
            if self.limited(c.job_type):
                by_type.setdefault(c.job_type, []).append(c)
            else:
                result.admitted.add(c.job_id)
        slotted, waiting = await self._acquire({t: cs for t, cs in by_type.items()
                                                if self.holds_slot(t)})
        try:
            await self._apply_rates(by_type, slotted, waiting, result)
        except BaseException:
            with contextlib.suppress(RedisError, OSError):
                await self.release((c.job_type, c.job_id) for group in by_type.values()
                                   for c in group if c.job_id in slotted)
            raise
        return result

    async def _apply_rates(self, by_type: Mapping[str, list[Candidate]], slotted: set[str],
                           waiting: Mapping[str, int], result: Admission) -> None:
        for name, group in by_type.items():
            limit = self.limits[name]
            if limit.concurrency is not None:
                busy = [c for c in group if c.job_id not in slotted]
                group = [c for c in group if c.job_id in slotted]
                ahead = waiting.get(name, 0)
                for c in busy:
                    if c.member is None:
                        result.held[c.job_id] = random.uniform(*BUSY_WAIT_SECONDS)
                    else:
                        result.held[c.job_id] = safety_net(ahead)
                        result.sleeping.append(c)
                        ahead += 1
            if limit.rate is not None:
                started, waits = await self._take_rate(name, limit.rate, group)
                refused = [c for c in group if c.job_id not in started]
                await self.release((name, c.job_id) for c in refused
                                   if limit.concurrency is not None)
                result.held.update(waits)
                group = [c for c in group if c.job_id in started]
            result.admitted.update(c.job_id for c in group)

    async def _acquire(self, by_type: Mapping[str, list[Candidate]]
                       ) -> tuple[set[str], dict[str, int]]:
        """Take slots; return the ids admitted and how many jobs wait in each type's
        line. Slots found free (leases or reservations run out) go to the line first."""
        if not by_type:
            return set(), {}
        admitted, woken, counts = await self._call("acquire", {
            name: [(c.job_id, int(c.force), c.member or "") for c in group]
            for name, group in by_type.items()})
        await self._wake(list(by_type), woken)
        return set(admitted), dict(zip(by_type, map(int, counts), strict=True))

    async def wait(self, sleeping: Iterable[Candidate]) -> None:
        """These held-back jobs are now in the delayed set: put them in line (one that
        had a place keeps it) and wake any that a slot freed meanwhile can take."""
        by_type: dict[str, list[tuple[str, str]]] = {}
        for c in sleeping:
            if c.member is not None and self.holds_slot(c.job_type):
                by_type.setdefault(c.job_type, []).append((c.member, c.tenant))
        if by_type:
            await self._wake(list(by_type), await self._call("wait", by_type))

    async def _wake(self, names: list[str], woken: list[Any]) -> None:
        """Wake the members the script popped for freed slots (flat: 1-based index into
        ``names``, member, place). A member found gone gives its reservation back and
        the next in line is woken instead.

        NOTE: if this process dies (or Redis fails) between the pop and the wake, those
        jobs only sleep until their safety net, and their slots are free again once the
        reservations run out."""
        try:
            for _ in range(WAKE_ROUNDS):
                if not woken:
                    return
                popped = {woken[i + 1]: (names[int(woken[i]) - 1], float(woken[i + 2]))
                          for i in range(0, len(woken), 3)}
                found = set(await self.wake({m: place for m, (_, place) in popped.items()}))
                gone: dict[str, list[str]] = {}
                for member, (name, _) in popped.items():
                    if member not in found:
                        gone.setdefault(name, []).append(member.rsplit(":", 1)[-1])
                if not gone:
                    return
                names = list(gone)
                woken = await self._call("unreserve", gone)
        except (RedisError, OSError) as exc:
            log.warning("typelimits.wake_failed", error=str(exc))

    async def _take_rate(self, name: str, rate: Rate, group: list[Candidate]
                         ) -> tuple[set[str], dict[str, float]]:
        """Take rate units for as many of ``group`` as fit; the others wait one interval
        after another from when the next unit frees up. Forced ones start whatever the
        limiter says (their units are taken if they fit)."""
        forced = [c for c in group if c.force]
        if forced:
            await self.rates.take(f"type:{name}", rate, cost=len(forced))
        others = [c for c in group if not c.force]
        if not others:
            return {c.job_id for c in forced}, {}
        interval = rate.interval_ms / 1000
        # NOTE: at most one period's worth at once: the limiter lets a bigger request
        # through when it is empty, which would start more than the burst.
        asked = min(len(others), rate.count)
        wait = await self.rates.take(f"type:{name}", rate, cost=asked)
        fit = asked
        if wait > 0:
            fit = max(0, asked - math.ceil(wait / interval - 1e-9))
            if fit and await self.rates.take(f"type:{name}", rate, cost=fit) > 0:
                fit = 0  # another worker took them meanwhile
            # The first unit that did not fit frees up this long from now.
            wait = max(wait - (asked - fit - 1) * interval, 0.001)
        else:
            wait = interval
        started = {c.job_id for c in forced + others[:fit]}
        waits = {c.job_id: wait + i * interval for i, c in enumerate(others[fit:])}
        return started, waits

    async def refresh(self, runs: Iterable[tuple[str, str]]) -> None:
        """Extend the leases of these (job type, job id) runs, which still run here."""
        by_type = self._by_slotted_type(runs)
        if by_type:
            await self._call("refresh", by_type)

    async def release(self, runs: Iterable[tuple[str, str]]) -> None:
        """Free the slots of these (job type, job id) runs, which ended, and wake the
        longest-waiting held-back jobs of those types, one per slot free."""
        by_type = self._by_slotted_type(runs)
        if by_type:
            await self._wake(list(by_type), await self._call("release", by_type))

    def _by_slotted_type(self, runs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
        by_type: dict[str, list[str]] = {}
        for name, job_id in runs:
            if self.holds_slot(name):
                by_type.setdefault(name, []).append(job_id)
        return by_type


async def leave_line(redis: Redis, prefix: str, job_type: str, member: str) -> None:
    """A held-back job that will not run (it was cancelled) leaves its type's waiting
    line, so that no freed slot is reserved for it. A no-op for a job not in line."""
    await redis.zrem(type_waiting_key(prefix, job_type), member)
