"""Retention: a finished job expires with its artifacts, its delivery log and its
idempotency key; a job still owed webhooks, or retried by hand, does not."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.runtime import Stores
from services.scheduler.retention import Retention
from services.scheduler.scheduler import Scheduler
from shared import transitions
from shared.ids import new_job_id
from shared.settings import Settings
from tests.conftest import Servers
from tests.receiver import receiver
from tests.support import isolated_settings, submit, wait_finished, wait_until
from tests.webhooks.conftest import StartNotifier, notifier  # noqa: F401  (a fixture)

RETENTION = 1.0
REPORT = {"format": "csv", "title": "t", "columns": ["a"], "rows": [["1"]]}


@pytest.fixture
def settings(servers: Servers, tmp_path: Path) -> Settings:
    """Finished jobs are kept one second unless their submit says otherwise."""
    return isolated_settings(servers.redis_url, servers.mongodb_url, tmp_path / "logs",
                             retention_seconds=RETENTION)


@pytest.fixture
async def retention(settings: Settings, stores: Stores) -> Retention:
    sched = Scheduler(settings, stores.jobs, stores.queue, stores.clock)
    assert await sched.lead()
    return Retention(sched, stores.deliveries, stores.artifacts)


async def swept(retention: Retention, stores: Stores, job_id: str) -> None:
    """Sweep until the job is gone."""

    async def gone() -> bool:
        await retention.scheduler.lead()
        await retention.sweep()
        return await stores.jobs.find_one({"_id": job_id}, {"_id": 1}) is None

    await wait_until(gone, 30, f"{job_id} to expire", interval=0.3)


async def leftovers(stores: Stores, job_id: str) -> dict[str, int]:
    files = [f["_id"] async for f in stores.artifacts.files.find({"metadata.job_id": job_id})]
    return {"files": len(files),
            "chunks": await stores.artifacts.chunks.count_documents({}),
            "deliveries": await stores.deliveries.count_documents({"job_id": job_id})}


async def test_a_finished_job_expires_with_its_artifacts_and_deliveries(
        api: httpx.AsyncClient, stores: Stores, background: Any,
        notifier: StartNotifier, retention: Retention) -> None:  # noqa: F811
    background()
    notifier()
    with receiver() as hooks:
        url = hooks.on("/hook", 204)
        job = await submit(api, "generateReport", REPORT, callbackUrl=url)
        kept = await submit(api, "echo", {"text": "kept"}, retentionSeconds=3600)
        await wait_finished(stores.jobs, [job, kept], 60)

        async def delivered() -> bool:
            doc = await stores.jobs.find_one({"_id": job})
            return (doc is not None and not doc["outbox"]
                    and await stores.deliveries.count_documents({"job_id": job}) == 3)

        await wait_until(delivered, 30, "the job's three webhooks")
    doc = await stores.jobs.find_one({"_id": job})
    assert doc and doc["status"] == "COMPLETED" and doc["artifacts"]
    assert doc["expires_at"] == doc["finished_at"] + timedelta(seconds=RETENTION)
    before = await leftovers(stores, job)
    assert before["files"] == 1 and before["chunks"] >= 1
    name = doc["artifacts"][0]["name"]
    assert (await api.get(f"/jobs/{job}/artifacts/{name}")).status_code == 200

    await swept(retention, stores, job)
    assert await leftovers(stores, job) == {"files": 0, "chunks": 0, "deliveries": 0}
    for path in (f"/jobs/{job}", f"/job-status/{job}", f"/jobs/{job}/events",
                 f"/jobs/{job}/deliveries", f"/jobs/{job}/artifacts/{name}"):
        r = await api.get(path)
        assert r.status_code == 404, (path, r.text)
    listed = (await api.get("/jobs")).json()["jobs"]
    assert [j["jobId"] for j in listed] == [kept]
    assert (await api.get(f"/job-status/{kept}")).json()["expiresAt"]


async def test_a_sweep_that_died_half_way_is_finished_by_the_next(
        api: httpx.AsyncClient, stores: Stores, background: Any,
        retention: Retention) -> None:
    background()
    job = await submit(api, "generateReport", REPORT)
    await wait_finished(stores.jobs, [job], 60)
    # as if a sweep had died after deleting the chunks, before the files and the job
    files = [f["_id"] async for f in stores.artifacts.files.find({"metadata.job_id": job})]
    await stores.artifacts.chunks.delete_many({"files_id": {"$in": files}})
    assert (await leftovers(stores, job))["files"] == 1
    await swept(retention, stores, job)
    assert await leftovers(stores, job) == {"files": 0, "chunks": 0, "deliveries": 0}


async def test_chunks_an_upload_left_without_its_files_record_expire_with_the_job(
        api: httpx.AsyncClient, stores: Stores, background: Any,
        retention: Retention) -> None:
    background()
    job = await submit(api, "echo", {"text": "x"})
    await wait_finished(stores.jobs, [job], 30)
    # as if a run had been killed mid-upload: its chunks written, not the files record
    await stores.artifacts.save(job, "partial.bin", b"p" * 600_000, "text/plain")
    await stores.artifacts.files.delete_many({"metadata.job_id": job})
    assert await leftovers(stores, job) == {"files": 0, "chunks": 3, "deliveries": 0}
    await swept(retention, stores, job)
    assert await leftovers(stores, job) == {"files": 0, "chunks": 0, "deliveries": 0}


async def test_retention_per_submit_is_bounded(api: httpx.AsyncClient, stores: Stores,
                                               background: Any) -> None:
    for bad in (59, 365 * 86400 + 1, "soon"):
        r = await api.post("/jobs", json={"jobType": "echo", "payload": {"text": "x"},
                                          "retentionSeconds": bad})
        assert r.status_code == 422, r.text
        assert r.json()["error"]["details"][0]["field"] == "retentionSeconds"
    background()
    job = await submit(api, "echo", {"text": "x"}, retentionSeconds=60)
    doc = (await wait_finished(stores.jobs, [job], 30))[job]
    assert doc["expires_at"] == doc["finished_at"] + timedelta(seconds=60)
    body = (await api.get(f"/jobs/{job}")).json()
    assert body["expiresAt"] and body["historyDropped"] == 0


async def test_an_idempotency_key_is_free_again_once_its_job_expired(
        api: httpx.AsyncClient, stores: Stores, background: Any,
        retention: Retention) -> None:
    background()
    body = {"jobType": "echo", "payload": {"text": "once"}, "idempotencyKey": "k-expiring"}
    first = await api.post("/jobs", json=body)
    assert first.status_code == 202
    job = first.json()["jobId"]
    again = await api.post("/jobs", json=body)
    assert (again.status_code, again.json()["jobId"]) == (200, job)
    await wait_finished(stores.jobs, [job], 30)
    await swept(retention, stores, job)
    fresh = await api.post("/jobs", json=body)
    assert fresh.status_code == 202 and fresh.json()["jobId"] != job


async def test_a_job_owed_webhooks_or_retried_is_kept(stores: Stores,
                                                      retention: Retention) -> None:
    now = stores.clock.now()
    past = now - timedelta(seconds=5)
    owed, retried = new_job_id(), new_job_id()
    for job_id in (owed, retried):
        doc, _ = transitions.new_job({"_id": job_id, "job_type": "echo", "payload": {},
                                      "priority": "default", "max_retries": 0,
                                      "timeout_seconds": 5, "run_at": None}, now)
        await stores.jobs.insert_one({**doc, "status": "FAILED", "finished_at": past,
                                      "expires_at": past})
    await stores.jobs.update_one({"_id": owed}, {"$set": {"outbox_due_at": now}})
    doc = await stores.jobs.find_one({"_id": retried})
    assert doc is not None
    _, t = await transitions.change(stores.jobs, retried,
                                    lambda d: transitions.requeue(d, now))
    assert t is not None and t.changes["expires_at"] is None
    assert await retention.sweep() == 0
    assert await stores.jobs.count_documents({"_id": {"$in": [owed, retried]}}) == 2
    # once its last webhook is delivered (or given up), the owed job goes too
    await stores.jobs.update_one({"_id": owed}, {"$unset": {"outbox_due_at": ""}})
    assert await retention.sweep() == 1
    assert await stores.jobs.count_documents({"_id": {"$in": [owed, retried]}}) == 1


async def test_delivery_records_have_a_ttl_backstop(stores: Stores) -> None:
    indexes = await stores.deliveries.index_information()
    assert indexes["at_ttl"]["expireAfterSeconds"] > 730 * 86400
