"""Tenants are isolated: another tenant's job answers 404 on every job endpoint, exactly as
a job that does not exist, and never shows in a list; an admin key sees every tenant's.
Idempotency keys are per tenant."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from services.runtime import Stores
from shared.models import Artifact

ECHO = {"jobType": "echo", "payload": {"text": "hi"}}


@pytest.fixture
async def keys(make_key: Any) -> dict[str, dict[str, str]]:
    return {"a": await make_key("tenant-a"), "b": await make_key("tenant-b"),
            "b_reader": await make_key("tenant-b", "read"),
            "admin": await make_key("ops", "admin")}


async def job_of_a(api: httpx.AsyncClient, stores: Stores, keys: dict[str, Any]
                   ) -> tuple[str, str]:
    """A job of tenant-a with an artifact and a delivery record (as a worker and the
    notifier leave them), and the id of its first event."""
    r = await api.post("/jobs", json=ECHO, headers=keys["a"])
    assert r.status_code == 202, r.text
    job_id: str = r.json()["jobId"]
    artifact: Artifact = await stores.artifacts.save(job_id, "out.txt", b"secret", "text/plain")
    await stores.jobs.update_one({"_id": job_id},
                                 {"$push": {"artifacts": artifact.model_dump()}})
    doc = await stores.jobs.find_one({"_id": job_id})
    assert doc is not None and doc["tenant"] == "tenant-a"
    first = doc["history"][0]
    event = {"id": first["event_id"], "type": "job.queued", "jobId": job_id,
             "status": "QUEUED", "attempt": 0, "seq": 1, "at": first["at"].isoformat(),
             "data": {}}
    await stores.deliveries.insert_one({
        "_id": "dlv_test", "job_id": job_id, "event_id": first["event_id"],
        "event_type": "job.queued", "url": "http://127.0.0.1:9/hook", "attempt": 1,
        "outcome": "failed", "error": "refused", "event": event, "at": first["at"]})
    return job_id, first["event_id"]


def endpoints(job_id: str, event_id: str) -> list[tuple[str, str]]:
    """Every endpoint that names a job; events once the job is finished (its stream then
    ends after the status), delete last."""
    return [
        ("GET", f"/job-status/{job_id}"),
        ("GET", f"/jobs/{job_id}"),
        ("GET", f"/jobs/{job_id}/deliveries"),
        ("GET", f"/jobs/{job_id}/artifacts/out.txt"),
        ("POST", f"/jobs/{job_id}/deliveries/{event_id}/redeliver"),
        ("POST", f"/jobs/{job_id}/cancel"),
        ("GET", f"/jobs/{job_id}/events"),
        ("POST", f"/jobs/{job_id}/retry"),
        ("DELETE", f"/jobs/{job_id}"),
    ]


async def test_another_tenant_gets_404_everywhere(api: httpx.AsyncClient, stores: Stores,
                                                  keys: dict[str, Any]) -> None:
    job_id, event_id = await job_of_a(api, stores, keys)
    missing = "job_" + "0" * 32
    for method, path in endpoints(job_id, event_id):
        for other in ("b", "b_reader"):
            if other == "b_reader" and method != "GET":
                continue  # a read key is refused changes before any job is looked up
            r = await api.request(method, path, headers=keys[other])
            assert r.status_code == 404, (method, path, other, r.text)
            assert r.json()["error"]["code"] == "not_found"
            # indistinguishable from a job that does not exist
            absent = await api.request(method, path.replace(job_id, missing),
                                       headers=keys[other])
            assert absent.json()["error"]["message"] == r.json()["error"]["message"].replace(
                job_id, missing), path
    # nothing was changed by the refused requests
    after = await stores.jobs.find_one({"_id": job_id})
    assert after is not None and after["status"] == "QUEUED" and after["outbox"] == []

    # the owner reaches every one of them
    answers = []
    for method, path in endpoints(job_id, event_id):
        r = await api.request(method, path, headers=keys["a"])
        answers.append(r.status_code)
        if path.endswith("/cancel"):
            assert r.json()["status"] == "CANCELLED"
        if path.endswith("/events"):
            assert r.text.startswith("event: status\n") and "CANCELLED" in r.text
        if path.endswith("/artifacts/out.txt"):
            assert r.content == b"secret"
        if path.endswith("/retry"):  # QUEUED again: cancel it so that it can be deleted
            assert (await api.post(f"/jobs/{job_id}/cancel", headers=keys["a"])
                    ).status_code == 200
    assert answers == [200, 200, 200, 200, 202, 200, 200, 202, 204]


async def test_an_admin_key_reaches_every_tenant(api: httpx.AsyncClient, stores: Stores,
                                                 keys: dict[str, Any]) -> None:
    job_id, event_id = await job_of_a(api, stores, keys)
    answers = []
    for method, path in endpoints(job_id, event_id):
        r = await api.request(method, path, headers=keys["admin"])
        answers.append(r.status_code)
        if path.endswith("/retry"):
            await api.post(f"/jobs/{job_id}/cancel", headers=keys["admin"])
    assert answers == [200, 200, 200, 200, 202, 200, 200, 202, 204]


async def test_lists_show_only_the_callers_tenant(api: httpx.AsyncClient,
                                                  keys: dict[str, Any]) -> None:
    mine = {(await api.post("/jobs", json=ECHO, headers=keys["a"])).json()["jobId"]
            for _ in range(3)}
    theirs = {(await api.post("/jobs", json=ECHO, headers=keys["b"])).json()["jobId"]
              for _ in range(2)}

    async def listed(headers: dict[str, str], **params: Any) -> set[str]:
        seen: set[str] = set()
        cursor = None
        while True:
            query = {**params, "limit": 1, **({"cursor": cursor} if cursor else {})}
            page = (await api.get("/jobs", params=query, headers=headers)).json()
            seen |= {j["jobId"] for j in page["jobs"]}
            cursor = page["nextCursor"]
            if not cursor:
                return seen

    assert await listed(keys["a"]) == mine
    assert await listed(keys["a"], status="QUEUED", jobType="echo") == mine
    assert await listed(keys["b_reader"]) == theirs
    assert await listed(keys["admin"]) == mine | theirs
    page = (await api.get("/jobs", headers=keys["admin"])).json()["jobs"]
    assert {j["tenant"] for j in page} == {"tenant-a", "tenant-b"}


async def test_idempotency_keys_are_per_tenant(api: httpx.AsyncClient, stores: Stores,
                                               keys: dict[str, Any]) -> None:
    body = {**ECHO, "idempotencyKey": "order-42"}
    first_a = await api.post("/jobs", json=body, headers=keys["a"])
    first_b = await api.post("/jobs", json=body, headers=keys["b"])
    assert first_a.status_code == first_b.status_code == 202
    assert first_a.json()["jobId"] != first_b.json()["jobId"]
    again_a = await api.post("/jobs", json=body, headers=keys["a"])
    again_b = await api.post("/jobs/batch", json={"jobs": [body]}, headers=keys["b"])
    assert again_a.status_code == 200 and again_a.json()["jobId"] == first_a.json()["jobId"]
    assert again_b.json()["jobs"][0]["jobId"] == first_b.json()["jobId"]
    # a batch of a third tenant with that key is a new job too
    other = await api.post("/jobs/batch", json={"jobs": [body]}, headers=keys["admin"])
    assert other.status_code == 202
    assert await stores.jobs.count_documents({"idempotency_key": "order-42"}) == 3
    # a different body under tenant-a's key is still a conflict
    changed = await api.post("/jobs", json={**body, "payload": {"text": "other"}},
                             headers=keys["a"])
    assert changed.status_code == 409


async def test_concurrent_duplicates_of_two_tenants_stay_apart(
        api: httpx.AsyncClient, stores: Stores, keys: dict[str, Any]) -> None:
    """Both tenants' submits land in one group commit: the unique index is per tenant."""
    import asyncio

    body = {**ECHO, "idempotencyKey": "same"}
    answers = await asyncio.gather(*(api.post("/jobs", json=body, headers=keys[t])
                                     for t in ("a", "b", "a", "b", "a", "b")))
    ids = {t: {r.json()["jobId"] for r in answers[i::2]} for i, t in enumerate("ab")}
    assert len(ids["a"]) == len(ids["b"]) == 1 and ids["a"] != ids["b"]
    assert await stores.jobs.count_documents({"idempotency_key": "same"}) == 2


async def test_jobs_without_keys_belong_to_the_default_tenant(api: httpx.AsyncClient,
                                                              stores: Stores) -> None:
    r = await api.post("/jobs/batch", json={"jobs": [ECHO, ECHO]})
    ids = [j["jobId"] for j in r.json()["jobs"]]
    async for doc in stores.jobs.find({"_id": {"$in": ids}}):
        assert doc["tenant"] == "default"
