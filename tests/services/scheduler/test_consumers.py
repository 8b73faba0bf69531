"""Dead workers leave no trace in Redis: their empty, idle consumers are deleted, and a
consumer that still owns entries never is."""

from __future__ import annotations

from typing import Any

from services.runtime import Stores
from services.scheduler.consumers import ConsumerCleanup
from services.scheduler.scheduler import Scheduler
from shared.keys import CONSUMER_GROUP
from shared.settings import Settings
from tests.support import wait_until

IDLE_SECONDS = 0.5


async def consumers(stores: Stores, stream: str) -> dict[str, Any]:
    return {c["name"]: c for c in await stores.redis.xinfo_consumers(stream, CONSUMER_GROUP)}


async def test_a_dead_workers_empty_consumer_goes_one_with_entries_stays(
        stores: Stores, settings: Settings) -> None:
    redis = stores.redis
    stream = stores.queue.keys.stream("default")
    await stores.queue.ensure_groups()
    # a worker whose entries were all settled or reclaimed, and one that died holding one
    await redis.xgroup_createconsumer(stream, CONSUMER_GROUP, "dead-empty")
    await redis.xadd(stream, {"job": "job_held"})
    held = await redis.xreadgroup(CONSUMER_GROUP, "dead-holding", {stream: ">"}, count=1)
    assert held and len(held[0][1]) == 1
    sched = Scheduler(settings.model_copy(update={"consumer_idle_seconds": IDLE_SECONDS}),
                      stores.jobs, stores.queue, stores.clock)
    cleanup = ConsumerCleanup(sched)
    assert await cleanup.sweep() == 0  # not leading: nothing is touched
    assert await sched.lead()
    assert await cleanup.sweep() == 0  # both are fresh

    async def both_idle() -> bool:
        found = await consumers(stores, stream)
        return all(found[name]["idle"] > IDLE_SECONDS * 1000 + 50
                   for name in ("dead-empty", "dead-holding"))

    await wait_until(both_idle, 20, "both consumers to go idle")
    # a live worker that has just read
    await redis.xgroup_createconsumer(stream, CONSUMER_GROUP, "live")
    assert await sched.lead()
    assert await cleanup.sweep() == 1
    left = await consumers(stores, stream)
    assert set(left) == {"dead-holding", "live"}
    assert left["dead-holding"]["pending"] == 1  # its entry is the reclaimer's to take
    assert await cleanup.sweep() == 0


async def test_every_lane_is_cleaned(stores: Stores, settings: Settings) -> None:
    stream = stores.queue.keys.stream("low", "acme")
    await stores.redis.xgroup_create(stream, CONSUMER_GROUP, id="0", mkstream=True)
    await stores.redis.sadd(stores.queue.keys.lanes, stream)
    await stores.redis.xgroup_createconsumer(stream, CONSUMER_GROUP, "gone")
    sched = Scheduler(settings.model_copy(update={"consumer_idle_seconds": 0.2}),
                      stores.jobs, stores.queue, stores.clock)

    async def cleaned() -> bool:
        assert await sched.lead()
        return await ConsumerCleanup(sched).sweep() == 1

    await wait_until(cleaned, 20, "the tenant lane's consumer to go")
    assert await consumers(stores, stream) == {}


async def test_a_stream_without_its_group_is_skipped(stores: Stores) -> None:
    await stores.redis.xadd("t-orphan-stream", {"x": "1"})
    assert await stores.queue.delete_idle_consumers(["t-orphan-stream", "t-missing"], 0) == 0
    await stores.redis.delete("t-orphan-stream")
