"""Redeliver: an event is in a job's outbox at most once however often it is asked
for, it is sent at once even behind a failing event's long backoff, and a job past its
retention is not kept alive by it. Real API, real notifier process, real receiver."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.runtime import Stores
from shared.settings import Settings
from tests.receiver import Receiver, receiver
from tests.support import Service, spawn, wait_until

HOUR = 3600.0


@pytest.fixture
def hooks() -> Iterator[Receiver]:
    with receiver() as r:
        yield r


@pytest.fixture
def notifier(settings: Settings, tmp_path: Path) -> Iterator[Service]:
    # NOTE: a failed attempt is retried only after an hour: anything sent sooner was
    # sent because of the redeliver.
    slow = settings.model_copy(update={"webhook_retry_schedule": [HOUR, HOUR]})
    service = spawn("notifier", slow, tmp_path / "out")
    try:
        yield service
    finally:
        service.stop()


async def log_of(api: httpx.AsyncClient, job: str) -> list[dict[str, Any]]:
    r = await api.get(f"/jobs/{job}/deliveries")
    assert r.status_code == 200, r.text
    rows: list[dict[str, Any]] = r.json()["deliveries"]
    return rows


async def test_redeliver_is_prompt_bounded_and_ends_with_retention(
        api: httpx.AsyncClient, stores: Stores, hooks: Receiver, notifier: Service) -> None:
    url = hooks.on("/hook", 204, 500)  # the first event arrives, every later one fails
    r = await api.post("/jobs", json={"jobType": "echo", "payload": {"text": "hi"},
                                      "callbackUrl": url})
    job = r.json()["jobId"]

    async def outcomes(*expected: str) -> bool:
        return [d["outcome"] for d in await log_of(api, job)] == list(expected)

    await wait_until(lambda: outcomes("delivered"), 30, "job.queued delivered")
    queued = (await log_of(api, job))[0]["eventId"]
    assert (await api.post(f"/jobs/{job}/cancel")).status_code == 200
    await wait_until(lambda: outcomes("delivered", "retrying"), 30, "job.cancelled failing")

    # sent now, ahead of the failing event (whose retry is an hour away)
    r = await api.post(f"/jobs/{job}/deliveries/{queued}/redeliver")
    assert r.status_code == 202 and r.json()["status"] == "queued"
    await wait_until(lambda: outcomes("delivered", "retrying", "retrying"), 30,
                     "the redelivery, sent at once")
    assert (await log_of(api, job))[-1]["eventId"] == queued

    # asked again and again, it is in the outbox once: while it waits each ask makes it
    # due now (one attempt each, so the schedule's 3 attempts soon end and the next ask
    # queues it afresh), and it is never added a second time
    answers = set()
    for _ in range(30):
        r = await api.post(f"/jobs/{job}/deliveries/{queued}/redeliver")
        assert r.status_code == 202, r.text
        answers.add(r.json()["status"])
        doc = await stores.jobs.find_one({"_id": job}, {"outbox": 1})
        assert doc is not None
        ids = [e["id"] for e in doc["outbox"]]
        assert len(ids) == len(set(ids)) <= 2, ids
    assert "already_queued" in answers
    assert (await api.get(f"/jobs/{job}/deliveries")).json()["pendingEvents"] <= 2

    # past its retention, a job's events are not sent again (that would keep it alive)
    past = stores.clock.now() - timedelta(seconds=1)
    await stores.jobs.update_one({"_id": job}, {"$set": {"expires_at": past}})
    r = await api.post(f"/jobs/{job}/deliveries/{queued}/redeliver")
    assert r.status_code == 409 and r.json()["error"]["code"] == "expired", r.text


async def test_a_cancel_and_retry_loop_cannot_grow_the_outbox_without_end(
        api: httpx.AsyncClient, stores: Stores) -> None:
    # NOTE: no notifier runs, so every event stays owed to the callback.
    r = await api.post("/jobs", json={"jobType": "echo", "payload": {"text": "hi"},
                                      "delaySeconds": 3600,
                                      "callbackUrl": "http://127.0.0.1:9/hook"})
    job = r.json()["jobId"]
    for _ in range(100):
        assert (await api.post(f"/jobs/{job}/cancel")).status_code == 200
        r = await api.post(f"/jobs/{job}/retry")
        if r.status_code != 202:
            break
    assert r.status_code == 409, r.text
    assert r.json()["error"]["code"] == "outbox_full"
    doc = await stores.jobs.find_one({"_id": job}, {"outbox": 1, "status": 1})
    assert doc is not None and doc["status"] == "CANCELLED"
    assert len(doc["outbox"]) == r.json()["error"]["details"]["pendingEvents"] <= 51
