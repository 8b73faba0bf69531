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

Rate: the shared GCRA limiter (:mod:`shared.ratelimit`) named ``type:<name>``, one unit
per job started.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.keys import type_slots_key
from shared.ratelimit import Rate, RateLimiter
from shared.settings import TypeLimitSetting

BUSY_WAIT_SECONDS = (0.2, 1.0)
"""How long a job held back by a full concurrency cap waits before it is tried again
(uniformly in this range, so the held-back jobs of several workers do not return
together)."""


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


@dataclass
class Admission:
    admitted: set[str] = field(default_factory=set)
    held: dict[str, float] = field(default_factory=dict)
    """Job id -> seconds to wait before trying again."""


class TypeLimiter:
    def __init__(self, redis: Redis, prefix: str, limits: Mapping[str, TypeLimit],
                 lease_seconds: float) -> None:
        self.redis = redis
        self.prefix = prefix
        self.limits = dict(limits)
        self.lease_ms = max(1, round(lease_seconds * 1000))
        self.rates = RateLimiter(redis, prefix)
        self._slots = redis.register_script(
            files("shared.lua").joinpath("type_slots.lua").read_text())

    def limited(self, job_type: str) -> bool:
        return job_type in self.limits

    def holds_slot(self, job_type: str) -> bool:
        """True when a run of this type holds a concurrency slot while it runs."""
        limit = self.limits.get(job_type)
        return limit is not None and limit.concurrency is not None

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
        slotted = await self._acquire({t: cs for t, cs in by_type.items()
                                       if self.holds_slot(t)})
        try:
            await self._apply_rates(by_type, slotted, result)
        except BaseException:
            with contextlib.suppress(RedisError, OSError):
                await self.release((c.job_type, c.job_id) for group in by_type.values()
                                   for c in group if c.job_id in slotted)
            raise
        return result

    async def _apply_rates(self, by_type: Mapping[str, list[Candidate]], slotted: set[str],
                           result: Admission) -> None:
        for name, group in by_type.items():
            limit = self.limits[name]
            if limit.concurrency is not None:
                busy = [c for c in group if c.job_id not in slotted]
                group = [c for c in group if c.job_id in slotted]
                for c in busy:
                    result.held[c.job_id] = random.uniform(*BUSY_WAIT_SECONDS)
            if limit.rate is not None:
                started, waits = await self._take_rate(name, limit.rate, group)
                refused = [c for c in group if c.job_id not in started]
                await self.release((name, c.job_id) for c in refused
                                   if limit.concurrency is not None)
                result.held.update(waits)
                group = [c for c in group if c.job_id in started]
            result.admitted.update(c.job_id for c in group)

    async def _acquire(self, by_type: Mapping[str, list[Candidate]]) -> set[str]:
        if not by_type:
            return set()
        keys: list[str] = []
        args: list[Any] = ["acquire", self.lease_ms]
        for name, group in by_type.items():
            keys.append(type_slots_key(self.prefix, name))
            args += [self.limits[name].concurrency, len(group)]
            for c in group:
                args += [c.job_id, int(c.force)]
        admitted: Any = await self._slots(keys=keys, args=args)
        return set(admitted)

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
        by_type: dict[str, list[str]] = {}
        for name, job_id in runs:
            if self.holds_slot(name):
                by_type.setdefault(name, []).append(job_id)
        if not by_type:
            return
        keys: list[str] = []
        args: list[Any] = ["refresh", self.lease_ms]
        for name, ids in by_type.items():
            keys.append(type_slots_key(self.prefix, name))
            args += [len(ids), *ids]
        await self._slots(keys=keys, args=args)

    async def release(self, runs: Iterable[tuple[str, str]]) -> None:
        """Free the slots of these (job type, job id) runs, which ended."""
        by_type: dict[str, list[str]] = {}
        for name, job_id in runs:
            if self.holds_slot(name):
                by_type.setdefault(name, []).append(job_id)
        if not by_type:
            return
        pipe = self.redis.pipeline(transaction=False)
        for name, ids in by_type.items():
            pipe.zrem(type_slots_key(self.prefix, name), *ids)
        await pipe.execute()
