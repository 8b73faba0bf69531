"""The per-type limiter on its own, on real Redis: slots, leases, rates."""

from __future__ import annotations

import asyncio

from services.runtime import Stores
from shared.keys import type_slots_key
from shared.ratelimit import Rate
from shared.typelimits import BUSY_WAIT_SECONDS, Candidate, TypeLimit, TypeLimiter
from tests.support import wait_until


def limiter(stores: Stores, lease_seconds: float = 30.0, **limits: TypeLimit
            ) -> TypeLimiter:
    return TypeLimiter(stores.redis, stores.queue.keys.prefix, limits, lease_seconds)


def jobs(job_type: str, *ids: str, force: bool = False) -> list[Candidate]:
    return [Candidate(i, job_type, force) for i in ids]


async def test_a_cap_admits_up_to_n_and_holds_the_rest(stores: Stores) -> None:
    limits = limiter(stores, capped=TypeLimit(concurrency=2))
    first = await limits.admit(jobs("capped", "a", "b", "c") + jobs("free", "x"))
    assert first.admitted == {"a", "b", "x"}
    assert list(first.held) == ["c"]
    assert BUSY_WAIT_SECONDS[0] <= first.held["c"] <= BUSY_WAIT_SECONDS[1]
    # A job already holding a slot keeps it (a start tried again); no second slot.
    again = await limits.admit(jobs("capped", "a", "d"))
    assert again.admitted == {"a"} and list(again.held) == ["d"]
    # A run already started in MongoDB's eyes is counted, never refused.
    forced = await limits.admit(jobs("capped", "e", force=True))
    assert forced.admitted == {"e"}
    await limits.release([("capped", "a"), ("capped", "b"), ("capped", "e")])
    assert (await limits.admit(jobs("capped", "d"))).admitted == {"d"}


async def test_a_dead_runs_slot_expires_unless_its_lease_is_renewed(stores: Stores
                                                                    ) -> None:
    limits = limiter(stores, lease_seconds=0.5, capped=TypeLimit(concurrency=1))
    assert (await limits.admit(jobs("capped", "alive"))).admitted == {"alive"}
    for _ in range(10):  # renewed for twice the lease: still held
        await limits.refresh([("capped", "alive")])
        assert not (await limits.admit(jobs("capped", "next"))).admitted
        await asyncio.sleep(0.1)

    async def admitted() -> bool:  # no longer renewed: the lease runs out
        return bool((await limits.admit(jobs("capped", "next"))).admitted)

    await wait_until(admitted, 10, "the lease to run out")
    # A refresh does not take back a slot that was released or expired.
    await limits.refresh([("capped", "alive")])
    members = await stores.redis.zrange(type_slots_key(limits.prefix, "capped"), 0, -1)
    assert members == ["next"]


async def test_a_rate_admits_a_burst_then_spaces_the_rest(stores: Stores) -> None:
    limits = limiter(stores, metered=TypeLimit(rate=Rate(5, 1.0)))
    result = await limits.admit(jobs("metered", *"abcdefgh"))
    assert result.admitted == set("abcde")
    waits = [result.held[i] for i in "fgh"]
    assert 0.1 < waits[0] <= 0.2 and waits == sorted(waits)
    assert abs(waits[2] - waits[0] - 0.4) < 0.01


async def test_a_rate_refusal_gives_back_the_slot(stores: Stores) -> None:
    limits = limiter(stores, both=TypeLimit(concurrency=10, rate=Rate(2, 60.0)))
    result = await limits.admit(jobs("both", "a", "b", "c", "d"))
    assert result.admitted == {"a", "b"} and set(result.held) == {"c", "d"}
    assert result.held["c"] > 20  # one unit every 30 s
    members = await stores.redis.zrange(type_slots_key(limits.prefix, "both"), 0, -1)
    assert sorted(members) == ["a", "b"]
