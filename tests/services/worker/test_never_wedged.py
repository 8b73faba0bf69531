"""A worker never lives on wedged: unstorable results, helpers that die, timeouts a
handler raises, long jobs beside free slots, cancels at awkward moments. Real servers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.exceptions import RedisError, ResponseError

from services.runtime import Stores
from services.scheduler.scheduler import Scheduler
from services.worker.worker import Running
from shared import transitions
from shared.queue import RedisQueue
from shared.stores import open_redis
from tests.faults import FaultProxy
from tests.support import lines, submit, wait_finished, wait_until


async def test_a_result_over_the_cap_fails_the_job_and_the_worker_goes_on(
        api: httpx.AsyncClient, stores: Stores, make_worker: Any) -> None:
    huge = await submit(api, "big_result", {"bytes": 17 * 1024 * 1024}, maxRetries=3)
    after = await submit(api, "echo", {"text": "next"})
    await asyncio.wait_for(make_worker(concurrency=1).run(burst=True), 60)
    docs = await wait_finished(stores.jobs, [huge, after], 10)
    assert docs[huge]["status"] == "FAILED" and docs[huge]["retries"] == 0
    assert docs[huge]["error"]["type"] == "ResultTooLarge"
    assert "JOBQUEUE_MAX_RESULT_BYTES" in docs[huge]["error"]["message"]
    assert docs[after]["status"] == "COMPLETED"


async def test_an_outcome_mongodb_refuses_settles_the_job(
        api: httpx.AsyncClient, stores: Stores, make_worker: Any) -> None:
    """Just under the highest cap, but with the rest of the job the document is over
    MongoDB's 16 MiB limit: the job fails with the reason instead of wedging."""
    limit = 16 * 1024 * 1024
    job = await submit(api, "big_result", {"bytes": limit - 100}, maxRetries=0)
    after = await submit(api, "echo", {"text": "next"})
    worker = make_worker(concurrency=1, max_result_bytes=limit)
    await asyncio.wait_for(worker.run(burst=True), 60)
    docs = await wait_finished(stores.jobs, [job, after], 10)
    assert docs[job]["status"] == "FAILED"
    assert docs[job]["error"]["type"] == "OutcomeNotStored"
    assert docs[after]["status"] == "COMPLETED"


async def test_a_helper_that_dies_stops_the_worker(api: httpx.AsyncClient, stores: Stores,
                                                   make_worker: Any) -> None:
    """Settling needs ``held`` to be a hash; break it and the outcome recorder dies. The
    worker must stop with the error, not live on with nothing recorded."""
    await submit(api, "echo", {"text": "x"})
    held = stores.queue.keys.held
    await stores.redis.delete(held)
    await stores.redis.set(held, "not a hash")
    with pytest.raises(BaseExceptionGroup) as raised:
        await asyncio.wait_for(make_worker().run(), 30)
    assert isinstance(raised.value.exceptions[0], ResponseError)


async def test_a_timeout_the_handler_raises_is_an_ordinary_failure(
        api: httpx.AsyncClient, stores: Stores, make_worker: Any, tmp_path: Path) -> None:
    path = tmp_path / "runs"
    job = await submit(api, "raises_timeout", {"path": str(path)}, maxRetries=0)
    await asyncio.wait_for(make_worker().run(burst=True), 30)
    doc = (await wait_finished(stores.jobs, [job], 10))[job]
    assert doc["status"] == "FAILED"
    assert doc["error"]["type"] == "TimeoutError"
    assert "did not answer" in doc["error"]["message"]
    assert lines(path) == [job]


async def test_a_job_beside_a_long_one_starts_at_once(
        api: httpx.AsyncClient, stores: Stores, background: Any, tmp_path: Path) -> None:
    background(concurrency=4)
    path = tmp_path / "long"
    long = await submit(api, "sleep", {"path": str(path), "seconds": 60})

    async def started() -> bool:
        return bool(lines(path))

    await wait_until(started, 20, "the long job to start")
    quick = await submit(api, "echo", {"text": "q"})
    # NOTE: well under the long job's 60 s: a worker that waited for a slot would fail.
    doc = (await wait_finished(stores.jobs, [quick], 20))[quick]
    assert doc["status"] == "COMPLETED"
    assert (await stores.jobs.find_one({"_id": long}))["status"] == "PROCESSING"
    await api.post(f"/jobs/{long}/cancel")


async def test_a_cancel_whose_message_was_missed_is_honoured(
        api: httpx.AsyncClient, stores: Stores, background: Any, tmp_path: Path) -> None:
    """Only the stored flag is set (no pub/sub message): the heartbeat finds it."""
    background()
    path = tmp_path / "runs"
    job = await submit(api, "sleep", {"path": str(path), "seconds": 60})

    async def started() -> bool:
        return bool(lines(path))

    await wait_until(started, 20, "the job to start")
    await stores.jobs.update_one({"_id": job}, {"$set": {"cancel_requested": True}})
    doc = (await wait_finished(stores.jobs, [job], 20))[job]
    assert doc["status"] == "CANCELLED" and doc["cancel_requested"] is False


async def test_a_cancel_before_the_run_starts_leaks_nothing(
        api: httpx.AsyncClient, stores: Stores, make_worker: Any, tmp_path: Path) -> None:
    path = tmp_path / "runs"
    job = await submit(api, "count", {"path": str(path)})
    worker = make_worker()
    [entry] = await stores.queue.read(worker.worker_id, 1, None)
    doc = await stores.jobs.find_one({"_id": job})
    assert doc is not None
    claimed = transitions.claim(doc, entry_id=entry.entry_id, worker_id=worker.worker_id,
                                now=stores.clock.now())
    assert await transitions.apply(stores.jobs, [claimed])
    worker._launch(entry, transitions.advanced(doc, claimed))
    run: Running = worker.running[job]
    worker._cancel(run)  # the cancel message lands before the task's first step
    task = run.task
    assert task is not None
    recorder = asyncio.create_task(worker.recorder.run())
    try:
        await asyncio.wait_for(task, 10)
    finally:
        recorder.cancel()
    assert job not in worker.running
    doc = await stores.jobs.find_one({"_id": job})
    assert doc is not None and doc["status"] == "CANCELLED"
    assert lines(path) == []  # the handler never ran


async def test_a_retried_job_does_not_inherit_a_cancel(
        api: httpx.AsyncClient, stores: Stores, background: Any, tmp_path: Path) -> None:
    background()
    path = tmp_path / "runs"
    job = await submit(api, "sleep_first", {"path": str(path), "seconds": 60})

    async def started() -> bool:
        return bool(lines(path))

    await wait_until(started, 20, "the job to start")
    assert (await api.post(f"/jobs/{job}/cancel")).status_code == 202
    doc = (await wait_finished(stores.jobs, [job], 20))[job]
    assert doc["status"] == "CANCELLED"
    assert (await api.post(f"/jobs/{job}/retry")).status_code == 202

    async def completed() -> bool:
        found = await stores.jobs.find_one({"_id": job})
        return found is not None and found["status"] == "COMPLETED"

    await wait_until(completed, 20, "the retried job to complete")


async def test_scheduler_keeps_leading_through_a_failed_renewal(
        stores: Stores, settings: Any) -> None:
    proxy = await FaultProxy.for_url(settings.redis_url, framed=False).start()
    redis = open_redis(settings.model_copy(
        update={"redis_url": proxy.url_for(settings.redis_url)}))
    try:
        sched = Scheduler(settings.model_copy(update={"leader_ttl_seconds": 30}),
                          stores.jobs, RedisQueue(redis, stores.queue.keys), stores.clock)
        assert await sched.lead()
        await proxy.close()  # Redis unreachable: the renewal fails
        with pytest.raises(RedisError):
            await sched.lead()
        assert sched.is_leader  # the lease it holds lasts 30 s more
    finally:
        await redis.aclose()
