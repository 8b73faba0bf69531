"""Writes of the API whose reply MongoDB lost: a submit is answered with the truth (202,
and the job runs), not a 503 for a job that is stored anyway; a delete that fails
half-way leaves nothing behind for good."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from services.api.app import create_app
from services.runtime import Stores
from services.scheduler.retention import Retention
from services.scheduler.scheduler import Scheduler
from shared.settings import Settings
from tests.faults import FaultProxy
from tests.support import submit, wait_finished


@pytest.fixture
async def proxied_api(settings: Settings, proxy: FaultProxy
                      ) -> AsyncIterator[httpx.AsyncClient]:
    assert settings.mongodb_url
    app = create_app(settings.model_copy(
        update={"mongodb_url": proxy.url_for(settings.mongodb_url)}))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield client


def job_insert(request: bytes) -> bool:
    return b"insert\x00" in request and b"jobs\x00" in request


async def test_a_lost_insert_reply_is_answered_with_the_truth(
        proxied_api: httpx.AsyncClient, proxy: FaultProxy, stores: Stores) -> None:
    proxy.lose_reply_to(job_insert)
    r = await proxied_api.post("/jobs", json={"jobType": "echo", "payload": {"text": "x"}})
    assert len(proxy.lost) == 1
    assert r.status_code == 202, r.text
    job = r.json()["jobId"]
    assert await stores.jobs.count_documents({"_id": job}) == 1
    # and it is enqueued now, not only when the reconciler comes by
    assert await stores.redis.hget(stores.queue.keys.held, job)


async def test_a_lost_insert_reply_for_a_batch_answers_every_job(
        proxied_api: httpx.AsyncClient, proxy: FaultProxy, stores: Stores) -> None:
    proxy.lose_reply_to(job_insert)
    r = await proxied_api.post("/jobs/batch", json={"jobs": [
        {"jobType": "echo", "payload": {"text": str(i)}} for i in range(5)]})
    assert r.status_code == 202, r.text
    ids = [j["jobId"] for j in r.json()["jobs"]]
    assert await stores.jobs.count_documents({"_id": {"$in": ids}}) == 5


async def test_a_delete_that_fails_half_way_is_finished_by_retention(
        proxied_api: httpx.AsyncClient, proxy: FaultProxy, stores: Stores,
        settings: Settings, make_worker: Any) -> None:
    job = await submit(proxied_api, "echo", {"text": "x"})
    await make_worker().run(burst=True)
    await wait_finished(stores.jobs, [job], 30)
    await stores.artifacts.save(job, "out.txt", b"left behind?", "text/plain")
    proxy.lose_reply_to(lambda r: b"delete\x00" in r and b"webhook_deliveries\x00" in r)

    r = await proxied_api.delete(f"/jobs/{job}")
    assert r.status_code == 503, r.text
    doc = await stores.jobs.find_one({"_id": job})
    assert doc is not None and doc["expires_at"] <= stores.clock.now()  # due for the sweep
    assert await stores.artifacts.files.count_documents({"metadata.job_id": job}) == 0

    scheduler = Scheduler(settings, stores.jobs, stores.queue, stores.clock)
    assert await scheduler.lead()
    assert await Retention(scheduler, stores.deliveries, stores.artifacts).sweep() == 1
    assert await stores.jobs.count_documents({"_id": job}) == 0
