"""Reclaim and reconcile reach work behind any backlog: both page with cursors."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx

from services.runtime import Stores
from services.scheduler.scheduler import Scheduler
from shared.keys import CONSUMER_GROUP
from shared.settings import Settings
from tests.support import submit

LIVE = 1200  # more than one XAUTOCLAIM call scans with the old fixed page of 100


async def test_reclaim_reaches_dead_entries_behind_many_live_ones(
        api: httpx.AsyncClient, stores: Stores, settings: Settings) -> None:
    redis, keys = stores.redis, stores.queue.keys
    stream = keys.stream("default")
    await stores.queue.ensure_groups()
    pipe = redis.pipeline(transaction=False)
    for i in range(LIVE):
        pipe.xadd(stream, {"job": f"job_live{i}"})
    await pipe.execute()
    # a live worker holds the oldest entries (fresh: just read)
    await redis.xreadgroup(CONSUMER_GROUP, "live", {stream: ">"}, count=LIVE)
    dead_jobs = [await submit(api, "echo", {"text": str(i)}) for i in range(3)]
    dead = await redis.xreadgroup(CONSUMER_GROUP, "dead", {stream: ">"}, count=10)
    dead_ids = [entry_id for _, entries in dead for entry_id, _ in entries]
    assert len(dead_ids) == 3
    # the dead worker stopped heartbeating a minute ago
    await redis.xclaim(stream, CONSUMER_GROUP, "dead", 0, dead_ids, idle=60_000,
                       justid=True)

    sched = Scheduler(settings.model_copy(update={"visibility_timeout_seconds": 30,
                                                  "reclaim_page_size": 50}),
                      stores.jobs, stores.queue, stores.clock)
    assert await sched.lead()
    for _ in range(LIVE // 50 + 2):  # one pass of the whole list at most
        await sched.reclaim()
        pending = await redis.xpending_range(stream, CONSUMER_GROUP, "-", "+", 10,
                                             consumername="dead")
        if not pending:
            break
    assert not pending, "the dead worker's entries were never reclaimed"
    held = await redis.hmget(keys.held, dead_jobs)
    assert all(entry and entry not in dead_ids for entry in held)  # re-added afresh


async def test_reconcile_reaches_due_jobs_behind_far_future_ones(
        api: httpx.AsyncClient, stores: Stores, settings: Settings) -> None:
    far = [await submit(api, "echo", {"text": "later"}, delaySeconds=86400)
           for _ in range(7)]
    soon = [await submit(api, "echo", {"text": "soon"}, delaySeconds=1) for _ in range(3)]
    # Redis forgets everything (as FLUSHALL would); the jobs are old enough to reconcile
    keys: list[Any] = [k async for k in stores.redis.scan_iter(f"{stores.queue.keys.prefix}:*")]
    await stores.redis.delete(*keys)
    await stores.jobs.update_many({}, {"$set": {
        "updated_at": stores.clock.now() - timedelta(minutes=5)}})

    sched = Scheduler(settings.model_copy(update={"reconcile_page_size": 4}),
                      stores.jobs, stores.queue, stores.clock)
    assert await sched.lead()
    assert await sched.reconcile() == 4  # one page: the oldest, far-future ones
    restored = 4
    for _ in range(5):
        restored += await sched.reconcile()
    assert restored == len(far) + len(soon)
    scores = await stores.redis.zmscore(stores.queue.keys.scheduled,
                                        [f"default:{j}" for j in soon])
    assert all(score is not None for score in scores)
