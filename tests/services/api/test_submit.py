"""The API in-process over ASGI, against real MongoDB and Redis."""

from typing import Any

import httpx
import pytest

from services.runtime import Stores
from shared.settings import Settings


async def stored_count(stores: Stores) -> int:
    return await stores.jobs.count_documents({})


async def test_submit_stores_and_enqueues(api: httpx.AsyncClient, stores: Stores) -> None:
    r = await api.post("/submit-job", json={"jobType": "echo", "payload": {"text": "hi"}})
    assert r.status_code == 202
    body = r.json()
    assert body["status"] == "QUEUED" and body["jobId"].startswith("job_")
    assert len(body["jobId"]) > 30
    doc = await stores.jobs.find_one({"_id": body["jobId"]})
    assert doc["payload"] == {"text": "hi"} and doc["history"][0]["status"] == "QUEUED"
    entries = await stores.redis.xrange(stores.queue.keys.stream("default"))
    assert [e[1]["job"] for e in entries] == [body["jobId"]]

    status = (await api.get(f"/job-status/{body['jobId']}")).json()
    assert {"jobId", "status", "retries", "createdAt", "updatedAt"} <= status.keys()
    full = (await api.get(f"/jobs/{body['jobId']}")).json()
    assert full["payload"] == {"text": "hi"} and full["history"][0]["eventId"].startswith("evt_")


async def test_priority_and_delay(api: httpx.AsyncClient, stores: Stores) -> None:
    r = await api.post("/jobs", json={"jobType": "echo", "payload": {"text": "x"},
                                      "priority": "high"})
    assert r.status_code == 202
    assert await stores.redis.xlen(stores.queue.keys.stream("high")) == 1
    r = await api.post("/jobs", json={"jobType": "echo", "payload": {"text": "x"},
                                      "delaySeconds": 60})
    assert r.json()["status"] == "SCHEDULED"
    assert await stores.redis.zcard(stores.queue.keys.scheduled) == 1


@pytest.mark.parametrize(("body", "status", "code", "field"), [
    ({}, 422, "invalid_input", "jobType"),
    ({"jobType": "nope"}, 422, "invalid_input", "jobType"),
    ({"jobType": "echo", "payload": {}}, 422, "invalid_input", "payload.text"),
    ({"jobType": "echo", "payload": {"text": 5}}, 422, "invalid_input", "payload.text"),
    ({"jobType": "echo", "payload": "text"}, 422, "invalid_input", "payload"),
    ({"jobType": "echo", "payload": {"text": "a"}, "priority": "urgent"}, 422,
     "invalid_input", "priority"),
    ({"jobType": "echo", "payload": {"text": "a"}, "maxRetries": -1}, 422, "invalid_input",
     "maxRetries"),
    ({"jobType": "echo", "payload": {"text": "a"}, "delaySeconds": 5,
      "runAt": "2030-01-01T00:00:00Z"}, 422, "invalid_input", None),
    ({"jobType": "echo", "payload": {"text": "a"}, "surprise": 1}, 422, "invalid_input",
     "surprise"),
    ({"jobType": "echo", "payload": {"text": "a"}, "callbackUrl": "file:///etc/passwd"}, 422,
     "url_refused", "callbackUrl"),
    ([1, 2], 422, "invalid_input", None),
])
async def test_bad_input_gets_a_json_error_and_stores_nothing(
        api: httpx.AsyncClient, stores: Stores, body: Any, status: int, code: str,
        field: str | None) -> None:
    r = await api.post("/submit-job", json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["message"]
    if field:
        assert field in [d["field"] for d in error["details"]], error
    assert await stored_count(stores) == 0


async def test_malformed_json_is_400(api: httpx.AsyncClient, stores: Stores) -> None:
    r = await api.post("/submit-job", content=b'{"jobType": "echo",',
                       headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    assert await stored_count(stores) == 0


async def test_body_over_the_limit_is_413(api: httpx.AsyncClient, stores: Stores,
                                          settings: Settings) -> None:
    big = {"jobType": "echo", "payload": {"text": "x" * (settings.max_body_bytes + 10)}}
    r = await api.post("/submit-job", json=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"

    async def chunks():  # no Content-Length: the limit applies while streaming
        for _ in range(settings.max_body_bytes // 65536 + 2):
            yield b"x" * 65536

    r = await api.post("/submit-job", content=chunks(),
                       headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert await stored_count(stores) == 0


async def test_unknown_ids_and_routes_are_404_json(api: httpx.AsyncClient) -> None:
    for path in ("/job-status/job_nope", "/jobs/job_nope", "/nowhere"):
        r = await api.get(path)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await api.post("/jobs/job_nope/cancel")
    assert r.status_code == 404


async def test_list_filters_and_pages_newest_first(api: httpx.AsyncClient) -> None:
    ids = []
    for i in range(5):
        r = await api.post("/jobs", json={"jobType": "echo", "payload": {"text": str(i)}})
        ids.append(r.json()["jobId"])
    await api.post("/jobs", json={"jobType": "count", "payload": {"path": "/dev/null"}})
    seen, cursor = [], None
    while True:
        params = {"jobType": "echo", "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await api.get("/jobs", params=params)).json()
        seen += [j["jobId"] for j in page["jobs"]]
        cursor = page["nextCursor"]
        if not cursor:
            break
    assert seen == list(reversed(ids))
    queued = (await api.get("/jobs", params={"status": "QUEUED"})).json()["jobs"]
    assert len(queued) == 6
    assert (await api.get("/jobs", params={"status": "BOGUS"})).status_code == 422
    assert (await api.get("/jobs", params={"cursor": "%%%"})).status_code == 422


async def test_batch_is_all_or_nothing(api: httpx.AsyncClient, stores: Stores) -> None:
    bad = {"jobs": [{"jobType": "echo", "payload": {"text": "ok"}},
                    {"jobType": "echo", "payload": {}}]}
    r = await api.post("/jobs/batch", json=bad)
    assert r.status_code == 422
    assert r.json()["error"]["details"][0]["field"] == "jobs.1.payload.text"
    assert await stored_count(stores) == 0
    good = {"jobs": [{"jobType": "echo", "payload": {"text": str(i)}} for i in range(30)]}
    r = await api.post("/jobs/batch", json=good)
    assert r.status_code == 202 and len(r.json()["jobs"]) == 30
    assert await stored_count(stores) == 30


async def test_health_and_readiness(api: httpx.AsyncClient) -> None:
    assert (await api.get("/healthz")).json() == {"status": "ok"}
    ready = await api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"mongodb": "ok",
                                                                   "redis": "ok"}
    assert (await api.get("/openapi.json")).status_code == 200
