"""A reply MongoDB sent but the worker never got: the write applied, the caller saw an
error. Real servers, with the fault-injecting proxy between the worker and MongoDB."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.runtime import Stores, open_stores
from services.scheduler.scheduler import Scheduler
from services.worker.worker import Worker
from shared import transitions
from shared.jobtypes import load_handler_modules
from shared.keys import CONSUMER_GROUP
from shared.settings import Settings
from tests.faults import FaultProxy
from tests.support import lines, submit, wait_finished


@pytest.fixture
async def proxied(settings: Settings, proxy: FaultProxy) -> AsyncIterator[Stores]:
    """Stores whose MongoDB traffic goes through the proxy."""
    assert settings.mongodb_url
    opened = await open_stores(settings.model_copy(
        update={"mongodb_url": proxy.url_for(settings.mongodb_url)}))
    yield opened
    await opened.close()


def worker_on(stores: Stores, settings: Settings, **overrides: Any) -> Worker:
    return Worker(settings.model_copy(update=overrides), stores.jobs, stores.queue,
                  stores.clock, load_handler_modules(settings.handler_modules),
                  stores.artifacts)


def claim_update(request: bytes) -> bool:
    return b"claim\x00" in request and b"$set" in request and b"started_at" in request


async def test_a_claim_whose_reply_was_lost_is_run(api: httpx.AsyncClient, stores: Stores,
                                                   proxied: Stores, proxy: FaultProxy,
                                                   settings: Settings,
                                                   tmp_path: Path) -> None:
    path = tmp_path / "runs"
    job = await submit(api, "count", {"path": str(path)})
    proxy.lose_reply_to(claim_update)
    await worker_on(proxied, settings).run(burst=True)

    assert len(proxy.lost) == 1  # the claim applied, and the worker never heard back
    doc = (await wait_finished(stores.jobs, [job], 10))[job]
    assert doc["status"] == "COMPLETED"
    assert [h["status"] for h in doc["history"]] == ["QUEUED", "PROCESSING", "COMPLETED"]
    assert lines(path) == [job]  # run once
    keys = stores.queue.keys
    assert await stores.redis.xlen(keys.stream("default")) == 0
    assert await stores.redis.hlen(keys.held) == 0


async def test_an_outcome_whose_reply_was_lost_is_settled(
        api: httpx.AsyncClient, stores: Stores, proxied: Stores, proxy: FaultProxy,
        settings: Settings, scheduler: Scheduler, tmp_path: Path) -> None:
    """The retry's SCHEDULED write applied but its answer was lost: the worker must
    still park the retry in the delayed set (only promotion runs here, no reconciler)."""
    path = tmp_path / "runs"
    job = await submit(api, "flaky", {"path": str(path), "failures": 1})
    proxy.lose_reply_to(lambda r: b"SCHEDULED" in r and b"$push" in r)
    worker = worker_on(proxied, settings)
    background = asyncio.create_task(worker.run())
    try:
        doc = (await wait_finished(stores.jobs, [job], 20))[job]
    finally:
        worker.stop()
        await background
    assert len(proxy.lost) == 1
    assert doc["status"] == "COMPLETED" and doc["retries"] == 1
    assert [h["status"] for h in doc["history"]] == [
        "QUEUED", "PROCESSING", "SCHEDULED", "QUEUED", "PROCESSING", "COMPLETED"]
    assert len(lines(path)) == 2


async def test_reconciler_restores_a_processing_job_whose_entry_is_gone(
        api: httpx.AsyncClient, stores: Stores, settings: Settings, make_worker: Any,
        tmp_path: Path) -> None:
    """What a lost claim reply used to leave behind: PROCESSING, claimed by an entry that
    was acknowledged and deleted, while ``held`` still names the job."""
    path = tmp_path / "runs"
    job = await submit(api, "count", {"path": str(path)})
    queue = stores.queue
    [entry] = await queue.read("ghost", 1, None)
    doc = await stores.jobs.find_one({"_id": job})
    assert doc is not None
    claimed = transitions.claim(doc, entry_id=entry.entry_id, worker_id="ghost",
                                now=stores.clock.now())
    assert await transitions.apply(stores.jobs, [claimed])
    stream = queue.keys.stream("default")
    await stores.redis.xack(stream, CONSUMER_GROUP, entry.entry_id)
    await stores.redis.xdel(stream, entry.entry_id)
    assert await stores.redis.hget(queue.keys.held, job) == entry.entry_id
    await stores.jobs.update_one({"_id": job}, {"$set": {
        "updated_at": stores.clock.now() - timedelta(minutes=5)}})

    sched = Scheduler(settings, stores.jobs, queue, stores.clock)
    assert await sched.lead()
    assert await sched.reconcile() == 1
    await make_worker().run(burst=True)
    doc = (await wait_finished(stores.jobs, [job], 10))[job]
    assert doc["status"] == "COMPLETED" and doc["attempt"] == 2
    assert lines(path) == [job]
    assert await sched.reconcile() == 0
