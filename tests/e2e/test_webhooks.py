"""Webhooks end to end: real API, worker and notifier processes, a real receiver."""

from __future__ import annotations

import asyncio
import json
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from services.runtime import Stores
from shared.settings import Settings
from tests.receiver import Receiver, receiver
from tests.support import TEST_WEBHOOK_SECRET, submit_many, wait_finished, wait_until


@pytest.fixture
def hooks() -> Iterator[Receiver]:
    with receiver() as r:
        yield r


def events(received: list[Any]) -> list[dict[str, Any]]:
    """Verify each delivery's signature with the reference library; return the events."""
    out = []
    for r in received:
        event = Webhook(TEST_WEBHOOK_SECRET).verify(r.body, r.headers)
        assert r.headers["webhook-id"] == event["id"]
        out.append(event)
    return out


async def deliveries(client: httpx.AsyncClient, job: str) -> dict[str, Any]:
    r = await client.get(f"/jobs/{job}/deliveries")
    assert r.status_code == 200
    body: dict[str, Any] = r.json()
    return body


async def test_every_transition_arrives_signed_and_in_order(
        services: Any, stores: Stores, hooks: Receiver) -> None:
    url = hooks.on("/hook", 204)
    api = services("api")
    services("worker")
    services("notifier")
    async with httpx.AsyncClient(base_url=api.url) as client:
        r = await client.post("/jobs", json={"jobType": "echo", "payload": {"text": "hi"},
                                             "callbackUrl": url})
        job = r.json()["jobId"]
        await wait_until(lambda: _count(hooks, "/hook", 3), 20, "3 webhooks")
        got = events(hooks.at("/hook"))
        assert [e["type"] for e in got] == ["job.queued", "job.processing", "job.completed"]
        assert [e["seq"] for e in got] == [1, 2, 3] and {e["jobId"] for e in got} == {job}
        assert got[2]["data"]["result"] == {"text": "hi", "attempt": 1}
        log = await deliveries(client, job)
        assert [d["outcome"] for d in log["deliveries"]] == ["delivered"] * 3
        assert log["pendingEvents"] == 0
        # Sending one again keeps its webhook-id.
        r = await client.post(f"/jobs/{job}/deliveries/{got[2]['id']}/redeliver")
        assert r.status_code == 202
        await wait_until(lambda: _count(hooks, "/hook", 4), 20, "the redelivery")
        assert events(hooks.at("/hook"))[3]["id"] == got[2]["id"]
        missing = await client.post(f"/jobs/{job}/deliveries/evt_nope/redeliver")
        assert missing.status_code == 404


async def _count(hooks: Receiver, path: str, n: int) -> bool:
    return len(hooks.at(path)) >= n


async def test_failing_receiver_is_retried_then_succeeds(services: Any, stores: Stores,
                                                         hooks: Receiver) -> None:
    url = hooks.on("/flaky", 500, 500, 204)
    api = services("api")
    services("worker")
    services("notifier")
    async with httpx.AsyncClient(base_url=api.url) as client:
        r = await client.post("/jobs", json={"jobType": "echo", "payload": {"text": "x"},
                                             "callbackUrl": url,
                                             "callbackEvents": ["job.completed"]})
        job = r.json()["jobId"]
        await wait_until(lambda: _count(hooks, "/flaky", 3), 20, "3 attempts")
        await asyncio.sleep(0.5)
        assert len({e["id"] for e in events(hooks.at("/flaky"))}) == 1  # one event, 3 tries
        log = (await deliveries(client, job))["deliveries"]
        assert [(d["attempt"], d["statusCode"], d["outcome"]) for d in log] == [
            (1, 500, "retrying"), (2, 500, "retrying"), (3, 204, "delivered")]


async def test_always_failing_receiver_gets_the_scheduled_attempts(
        services: Any, stores: Stores, hooks: Receiver) -> None:
    url = hooks.on("/down", 500)
    redirect = hooks.on("/redirect", (302, {"location": "http://169.254.169.254/"}, b""))
    api = services("api")
    services("worker")
    services("notifier")
    async with httpx.AsyncClient(base_url=api.url) as client:
        jobs = []
        for target in (url, redirect):
            r = await client.post("/jobs", json={"jobType": "echo", "payload": {"text": "x"},
                                                 "callbackUrl": target,
                                                 "callbackEvents": ["job.completed"]})
            jobs.append(r.json()["jobId"])

        async def gave_up() -> bool:
            logs = [(await deliveries(client, j))["deliveries"] for j in jobs]
            return all(log and log[-1]["outcome"] == "failed" for log in logs)

        await wait_until(gave_up, 20, "both deliveries to be marked failed")
        await asyncio.sleep(1)
        assert len(hooks.at("/down")) == 3  # first try + the 2 scheduled retries
        assert len(hooks.at("/redirect")) == 3  # a redirect is a failure, never followed
        for job in jobs:
            log = await deliveries(client, job)
            assert log["pendingEvents"] == 0
            status = (await client.get(f"/job-status/{job}")).json()["status"]
            assert status == "COMPLETED"  # the job itself is unaffected


async def test_retry_after_is_honoured_and_410_stops_delivery(
        services: Any, stores: Stores, settings: Settings, hooks: Receiver) -> None:
    slow = hooks.on("/busy", (429, {"retry-after": "1"}, b""), 204)
    gone = hooks.on("/gone", 410)
    api = services("api")
    services("worker")
    # Retry-After is honoured up to the schedule's longest wait (here 2 s).
    services("notifier", with_settings=settings.model_copy(
        update={"webhook_retry_schedule": [0.2, 2]}))
    async with httpx.AsyncClient(base_url=api.url) as client:
        await client.post("/jobs", json={"jobType": "echo", "payload": {"text": "x"},
                                         "callbackUrl": slow,
                                         "callbackEvents": ["job.completed"]})
        r = await client.post("/jobs", json={"jobType": "echo", "payload": {"text": "x"},
                                             "callbackUrl": gone})
        gone_job = r.json()["jobId"]
        await wait_until(lambda: _count(hooks, "/busy", 2), 20, "the retry after 429")
        first, second = hooks.at("/busy")
        assert second.at - first.at >= 0.95
        await wait_finished(stores.jobs, [gone_job], 20)
        await asyncio.sleep(1)
        assert len(hooks.at("/gone")) == 1  # job.queued answered 410: nothing more sent
        log = await deliveries(client, gone_job)
        assert log["callbackGone"] and log["deliveries"][0]["outcome"] == "gone"


async def test_events_missed_while_the_notifier_was_down_arrive_once(
        services: Any, stores: Stores, hooks: Receiver) -> None:
    url = hooks.on("/hook", 204)
    api = services("api")
    services("worker", "--concurrency", "10")
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
        ids = await submit_many(client, [{"jobType": "echo", "payload": {"text": str(i)},
                                          "callbackUrl": url} for i in range(50)])
    await wait_finished(stores.jobs, ids, 30)
    assert hooks.at("/hook") == []
    services("notifier")
    services("notifier")  # two notifiers: still one delivery per attempt
    await wait_until(lambda: _count(hooks, "/hook", 150), 40, "150 webhooks")
    await asyncio.sleep(1.5)
    got = events(hooks.at("/hook"))
    assert len(got) == 150
    assert Counter(Counter(e["id"] for e in got).values()) == {1: 150}
    by_job: dict[str, list[int]] = defaultdict(list)
    for e in got:
        by_job[e["jobId"]].append(e["seq"])
    assert set(by_job) == set(ids)
    assert all(seqs == [1, 2, 3] for seqs in by_job.values())  # in order per job


async def test_sse_streams_every_transition(services: Any, stores: Stores,
                                            tmp_path: Path) -> None:
    api = services("api")
    services("worker")
    services("scheduler")
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
        r = await client.post("/jobs", json={"jobType": "echo", "payload": {"text": "x"},
                                             "delaySeconds": 1})
        job = r.json()["jobId"]
        seen: list[tuple[str, dict[str, Any]]] = []
        async with client.stream("GET", f"/jobs/{job}/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            name = None
            async for line in stream.aiter_lines():
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: ") and name:
                    seen.append((name, json.loads(line[6:])))
        assert [n for n, _ in seen] == ["status", "job.queued", "job.processing",
                                        "job.completed"]
        assert seen[0][1]["status"] == "SCHEDULED"
        assert (await client.get("/jobs/job_nope/events")).status_code == 404
