"""Lanes: one stream per (priority, tenant), read round-robin within a priority, on a real
Redis (and MongoDB where the scheduler takes part)."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import httpx

from services.runtime import Stores
from services.scheduler.scheduler import Scheduler
from shared.keys import CONSUMER_GROUP, Keys, Lane
from shared.queue import Delivery, Enqueue, RedisQueue, Settle, Waiting, member_job_id, member_lane
from shared.settings import Settings
from shared.status import JobStatus, Priority
from tests.support import submit

DEFAULT = Priority.DEFAULT


async def enqueue_lane(queue: RedisQueue, tenant: str, n: int,
                       priority: Priority = DEFAULT) -> list[str]:
    ids = [f"job_{tenant}{priority.value}{i}" for i in range(n)]
    await queue.enqueue([Enqueue(i, priority, tenant=tenant) for i in ids])
    return ids


async def read_one_by_one(queue: RedisQueue, reads: int) -> list[Delivery]:
    got = []
    for r in range(reads):
        # NOTE: each read by another consumer: the rotation lives in Redis, not in a worker
        got += await queue.read(f"w{r % 3}", 1, None)
    return got


def test_lane_keys() -> None:
    keys = Keys("jq", "emails")
    assert keys.stream("high") == "jq:{emails}:stream:high"  # the pre-lane name
    assert keys.stream("low", "acme") == "jq:{emails}:stream:low:acme"
    for lane in (Lane(Priority.LOW, "acme"), Lane(Priority.HIGH)):
        assert keys.lane_of(keys.lane_stream(lane)) == lane
    for name in (keys.ready("high"), keys.rotation("low"), keys.lanes, keys.doorbell):
        assert "{emails}" in name


def test_delayed_members_name_their_lane() -> None:
    assert member_job_id("default:job_1") == "job_1"
    assert member_lane("default:job_1") == Lane(DEFAULT)
    assert member_job_id("low:acme:job_1") == "job_1"
    assert member_lane("low:acme:job_1") == Lane(Priority.LOW, "acme")


async def test_reads_go_round_the_tenants(stores: Stores) -> None:
    queue = stores.queue
    await queue.ensure_groups()
    await enqueue_lane(queue, "a", 6)
    await enqueue_lane(queue, "b", 3)
    await enqueue_lane(queue, "c", 2)
    got = await read_one_by_one(queue, 11)
    assert [d.tenant for d in got] == list("abcabcabaaa")
    assert await queue.read("w0", 5, None) == []
    # a lane with nothing new has left the ready set; an enqueue puts it back
    assert await stores.redis.zcard(queue.keys.ready(DEFAULT)) == 0
    await enqueue_lane(queue, "b", 1)
    assert [d.tenant for d in await queue.read("w0", 5, None)] == ["b"]


async def test_one_read_shares_its_count_between_tenants(stores: Stores) -> None:
    queue = stores.queue
    big = await enqueue_lane(queue, "big", 3000)
    small = await enqueue_lane(queue, "small", 4)
    got = await queue.read("w", 8, None)
    assert sorted(d.tenant for d in got) == ["big"] * 4 + ["small"] * 4
    assert {d.job_id for d in got} == set(big[:4]) | set(small)
    assert all(d.priority is DEFAULT for d in got)


async def test_priority_stays_strict_across_lanes(stores: Stores) -> None:
    queue = stores.queue
    low = await enqueue_lane(queue, "a", 3, Priority.LOW)
    default = await enqueue_lane(queue, "b", 2) + await enqueue_lane(queue, "c", 2)
    high = await enqueue_lane(queue, "d", 2, Priority.HIGH)
    got = await read_one_by_one(queue, 5)
    assert [d.job_id for d in got[:2]] == high
    assert {d.job_id for d in got[2:]} <= set(default)
    rest = await queue.read("w", 10, None)
    assert [d.priority for d in rest] == [DEFAULT] * 1 + [Priority.LOW] * 3
    assert {d.job_id for d in rest[1:]} == set(low)


async def test_entries_of_the_old_per_priority_streams_are_read(stores: Stores) -> None:
    """Entries written before lanes existed sit in the default tenant's lanes."""
    redis, keys = stores.redis, stores.queue.keys
    # as an older version left it: the stream and its group, no ready sets or lanes set
    await redis.delete(*(keys.ready(p) for p in Priority), keys.lanes)
    await redis.xadd(keys.stream("low"), {"job": "job_old"})
    assert await stores.queue.read("w", 5, None) == []  # (a reader that skipped start-up)
    queue = RedisQueue(redis, keys)  # a worker of the new version starts
    await queue.ensure_groups()
    [delivery] = await queue.read("w", 5, None)
    assert (delivery.job_id, delivery.lane) == ("job_old", Lane(Priority.LOW))


async def test_settle_touch_and_lost_address_the_lane(stores: Stores) -> None:
    queue, redis = stores.queue, stores.redis
    [job] = await enqueue_lane(queue, "acme", 1, Priority.HIGH)
    stream = queue.keys.stream(Priority.HIGH, "acme")
    assert await queue.lost([Waiting(job, Priority.HIGH, tenant="acme")]) == []
    [d] = await queue.read("w", 1, None)
    assert d.lane == Lane(Priority.HIGH, "acme")
    await queue.touch("w2", [d])
    [pending] = await redis.xpending_range(stream, CONSUMER_GROUP, "-", "+", 10)
    assert pending["consumer"] == "w2"
    await queue.settle([Settle(d)])
    assert await redis.xlen(stream) == 0
    assert await redis.hget(queue.keys.held, job) is None
    waiting = Waiting(job, Priority.HIGH, tenant="acme")
    assert await queue.lost([waiting]) == [waiting]


async def test_defer_parks_the_job_until_it_is_due(stores: Stores) -> None:
    queue, redis = stores.queue, stores.redis
    [job] = await enqueue_lane(queue, "acme", 1)
    [d] = await queue.read("w", 1, None)
    run_at = await queue.now_ms() + 60_000
    await queue.defer(d, run_at)
    stream = queue.keys.stream(DEFAULT, "acme")
    assert await redis.xlen(stream) == 0
    assert (await redis.xpending(stream, CONSUMER_GROUP))["pending"] == 0
    assert await redis.hget(queue.keys.held, job) is None
    assert await redis.zscore(queue.keys.scheduled, f"default:acme:{job}") == run_at
    # QUEUED in MongoDB, parked in Redis: not lost
    assert await queue.lost([Waiting(job, DEFAULT, tenant="acme")]) == []
    assert await queue.due(run_at - 1, 10) == []
    members = await queue.due(run_at, 10)
    assert await queue.promote(members) == 1
    [again] = await queue.read("w", 1, None)
    assert (again.job_id, again.lane) == (job, Lane(DEFAULT, "acme"))


async def test_a_blocked_reader_wakes_for_a_new_tenant(stores: Stores) -> None:
    queue = stores.queue
    await queue.ensure_groups()
    assert await queue.read("w", 4, None) == []
    reader = asyncio.create_task(queue.read("w", 4, 10_000))
    await asyncio.sleep(0.2)  # let it block
    assert not reader.done()
    started = time.monotonic()
    [job] = await enqueue_lane(queue, "newcomer", 1, Priority.LOW)
    [d] = await asyncio.wait_for(reader, 10)
    assert time.monotonic() - started < 2.0  # woken by the doorbell, not the timeout
    assert (d.job_id, d.tenant) == (job, "newcomer")


async def test_reclaim_reaches_a_dead_workers_entries_in_a_tenant_lane(
        api: httpx.AsyncClient, stores: Stores, settings: Settings) -> None:
    queue, redis = stores.queue, stores.redis
    job = await submit(api, "echo", {"text": "x"}, delaySeconds=3600)
    await queue.drop_scheduled(await redis.zrange(queue.keys.scheduled, 0, -1))
    await stores.jobs.update_one({"_id": job}, {"$set": {"status": "QUEUED",
                                                         "tenant": "acme"}})
    await queue.enqueue([Enqueue(job, DEFAULT, tenant="acme")])
    [dead] = await queue.read("dead", 1, None)
    stream = queue.keys.stream(DEFAULT, "acme")
    await redis.xclaim(stream, CONSUMER_GROUP, "dead", 0, [dead.entry_id], idle=60_000,
                       justid=True)
    sched = Scheduler(settings.model_copy(update={"visibility_timeout_seconds": 30}),
                      stores.jobs, queue, stores.clock)
    assert await sched.lead()
    assert await sched.reclaim() == 1
    assert not await redis.xpending_range(stream, CONSUMER_GROUP, "-", "+", 10,
                                          consumername="dead")
    [again] = await queue.read("live", 1, None)
    assert (again.job_id, again.tenant, again.deliveries) == (job, "acme", 2)
    assert await redis.hget(queue.keys.held, job) == again.entry_id


async def test_reconcile_restores_lanes_and_leaves_deferred_jobs_alone(
        api: httpx.AsyncClient, stores: Stores, settings: Settings) -> None:
    queue, redis = stores.queue, stores.redis
    lost_job = await submit(api, "echo", {"text": "lost"})
    deferred = await submit(api, "echo", {"text": "deferred"})
    await stores.jobs.update_many({}, {"$set": {
        "tenant": "acme", "updated_at": stores.clock.now() - timedelta(minutes=5)}})
    # Redis forgets the first job; the second is deferred by a worker (still QUEUED)
    await redis.delete(queue.keys.stream(DEFAULT), queue.keys.held)
    await queue.enqueue([Enqueue(deferred, DEFAULT, tenant="acme")])
    [d] = await queue.read("w", 1, None)
    await queue.defer(d, await queue.now_ms() + 60_000)

    sched = Scheduler(settings, stores.jobs, queue, stores.clock)
    assert await sched.lead()
    assert await sched.reconcile() == 1
    [restored] = await queue.read("w", 5, None)
    assert (restored.job_id, restored.lane) == (lost_job, Lane(DEFAULT, "acme"))
    assert await sched.reconcile() == 0  # the restored entry is held; the deferred parked
    assert await stores.jobs.count_documents({"status": JobStatus.QUEUED}) == 2
    assert await redis.zcard(queue.keys.scheduled) == 1
