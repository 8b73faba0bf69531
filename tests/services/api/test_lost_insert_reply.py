"""A submit whose insert MongoDB applied but whose reply was lost: the caller is told
the truth (202, and the job runs), not a 503 for a job that is stored anyway."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from services.api.app import create_app
from services.runtime import Stores
from shared.settings import Settings
from tests.faults import FaultProxy


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
