"""The per-type limiter on its own, on real Redis: slots, leases, rates."""

from __future__ import annotations

import asyncio

from services.runtime import Stores
from shared.keys import type_reserved_key, type_slots_key, type_waiting_key
from shared.queue import Enqueue, scheduled_member
from shared.ratelimit import Rate
from shared.tenants import DEFAULT_TENANT
from shared.typelimits import (
    BUSY_WAIT_SECONDS,
    Candidate,
    TypeLimit,
    TypeLimiter,
    safety_net,
)
from tests.support import wait_until


def limiter(stores: Stores, lease_seconds: float = 30.0, reserve_seconds: float = 5.0,
            **limits: TypeLimit) -> TypeLimiter:
    return TypeLimiter(stores.redis, stores.queue.keys.prefix, limits, lease_seconds,
                       stores.queue.wake, reserve_seconds)


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


# -- held-back jobs wait in line ---------------------------------------------------------

LATER_MS = 4_000_000_000_000  # a run time far off: only a wake makes these due


async def sleeping(stores: Stores, job_type: str, *ids: str,
                   tenant: str = DEFAULT_TENANT) -> list[Candidate]:
    """Jobs parked in the delayed set (as held-back jobs are), in line in this order."""
    await stores.queue.enqueue([Enqueue(i, "default", run_at_ms=LATER_MS, tenant=tenant)
                                for i in ids])
    return [Candidate(i, job_type, member=scheduled_member(i, "default", tenant),
                      tenant=tenant) for i in ids]


async def line(limits: TypeLimiter, job_type: str) -> list[str]:
    members = await limits.redis.zrange(type_waiting_key(limits.prefix, job_type), 0, -1)
    return [m.rsplit(":", 1)[-1] for m in members]


async def reserved(limits: TypeLimiter, job_type: str) -> set[str]:
    return set(await limits.redis.zrange(type_reserved_key(limits.prefix, job_type), 0, -1))


async def run_at(stores: Stores, job_id: str) -> float | None:
    score: float | None = await stores.redis.zscore(stores.queue.keys.scheduled,
                                                    scheduled_member(job_id, "default"))
    return score


async def test_held_jobs_wait_in_line_and_a_freed_slot_wakes_the_first(stores: Stores
                                                                       ) -> None:
    limits = limiter(stores, capped=TypeLimit(concurrency=2))
    assert (await limits.admit(jobs("capped", "a", "b"))).admitted == {"a", "b"}
    held = await sleeping(stores, "capped", "c", "d", "e")
    result = await limits.admit(held)
    assert not result.admitted and result.sleeping == held
    # Each sleeps for a safety net, longer the longer the line.
    assert [result.held[i] for i in "cde"] == [safety_net(0), safety_net(1), safety_net(2)]
    await limits.wait(result.sleeping)
    assert await line(limits, "capped") == ["c", "d", "e"]

    await limits.release([("capped", "a")])
    # The first in line is woken (due at its place in line, long past) with the slot
    # kept for it: a newcomer waits behind the line.
    assert await line(limits, "capped") == ["d", "e"]
    assert await reserved(limits, "capped") == {"c"}
    assert await run_at(stores, "c") == 1 and await run_at(stores, "d") == LATER_MS
    assert not (await limits.admit(jobs("capped", "newcomer"))).admitted
    assert (await limits.admit(held[:1])).admitted == {"c"}
    assert await reserved(limits, "capped") == set()

    # A job back early (its safety net) and refused again keeps its place in line.
    again = await limits.admit(held[1:2])
    assert not again.admitted and again.sleeping == held[1:2]
    assert await line(limits, "capped") == ["d", "e"]
    await limits.wait(again.sleeping)
    assert await line(limits, "capped") == ["d", "e"]

    # One slot frees per run that ends: two runs, two woken.
    await limits.release([("capped", "b"), ("capped", "c")])
    assert await line(limits, "capped") == []
    assert await reserved(limits, "capped") == {"d", "e"}
    # A newcomer gets a slot only when nobody waits for it.
    assert (await limits.admit(held[1:])).admitted == {"d", "e"}
    await limits.release([("capped", "d")])
    assert (await limits.admit(jobs("capped", "newcomer"))).admitted == {"newcomer"}


async def test_a_slot_found_expired_wakes_the_line(stores: Stores) -> None:
    limits = limiter(stores, lease_seconds=0.3, capped=TypeLimit(concurrency=1))
    assert (await limits.admit(jobs("capped", "dead"))).admitted == {"dead"}
    held = await sleeping(stores, "capped", "w")
    await limits.wait((await limits.admit(held)).sleeping)
    assert await line(limits, "capped") == ["w"]

    async def woken() -> bool:  # the dead run's lease runs out; any admit notices
        refused = await limits.admit(jobs("capped", "newcomer"))
        return not refused.admitted and await reserved(limits, "capped") == {"w"}

    await wait_until(woken, 10, "the expired slot to go to the line")
    assert await run_at(stores, "w") == 1


async def test_waking_a_gone_job_is_harmless(stores: Stores) -> None:
    limits = limiter(stores, reserve_seconds=0.3, capped=TypeLimit(concurrency=1))
    assert (await limits.admit(jobs("capped", "a"))).admitted == {"a"}
    held = await sleeping(stores, "capped", "gone", "cancelled", "next")
    await limits.wait((await limits.admit(held)).sleeping)
    # Expired or deleted: its member left the delayed set. Cancelled: its member is
    # still there (the scheduler drops it when it is due).
    await stores.queue.unschedule("gone", "default")

    # A wake skips a member that is not in the delayed set, and does not add it.
    assert await stores.queue.wake({scheduled_member("gone", "default"): 1}) == []
    assert await run_at(stores, "gone") is None

    # The slot passes over the gone job to the next in line.
    await limits.release([("capped", "a")])
    assert await reserved(limits, "capped") == {"cancelled"}
    assert await line(limits, "capped") == ["next"]
    assert await run_at(stores, "cancelled") == 2

    # The cancelled job never comes: its reservation runs out and the next is woken.
    async def next_woken() -> bool:
        await limits.admit(jobs("capped", "newcomer"))
        return await reserved(limits, "capped") == {"next"}

    await wait_until(next_woken, 10, "the reservation to run out")
    assert await line(limits, "capped") == []
    assert (await limits.admit(held[2:])).admitted == {"next"}


async def test_the_line_takes_tenants_in_turn(stores: Stores) -> None:
    """One tenant's long line does not hold back another's jobs: each tenant's jobs keep
    their order, and tenants are woken in turn."""
    limits = limiter(stores, capped=TypeLimit(concurrency=1))
    assert (await limits.admit(jobs("capped", "running"))).admitted == {"running"}
    bob = await sleeping(stores, "capped", *[f"b{i}" for i in range(10)], tenant="bob")
    await limits.wait((await limits.admit(bob)).sleeping)
    running = "running"
    for i in range(3):  # bob's first three run one after another
        await limits.release([("capped", running)])
        assert await reserved(limits, "capped") == {f"b{i}"}
        assert (await limits.admit(bob[i:i + 1])).admitted == {f"b{i}"}
        running = f"b{i}"
    alice = await sleeping(stores, "capped", "a0", "a1", tenant="alice")
    await limits.wait((await limits.admit(alice)).sleeping)
    order = await line(limits, "capped")
    assert order[:4] == ["a0", "b3", "a1", "b4"], order  # in turn, each in its order
    assert order[4:] == [f"b{i}" for i in range(5, 10)]
