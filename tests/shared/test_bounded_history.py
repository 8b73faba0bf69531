"""What a job keeps is bounded: its first and last history entries and a count, short
tracebacks, and events without results (a webhook gets a small one, or a link)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from services.api.schemas import JobPublic, from_doc
from services.runtime import Stores
from services.scheduler.scheduler import Scheduler, died_runs
from shared import transitions
from shared.events import webhook_result
from shared.ids import new_job_id
from shared.models import ErrorInfo
from shared.settings import Settings
from tests.conftest import Servers
from tests.receiver import receiver
from tests.support import (
    TEST_WEBHOOK_SECRET,
    isolated_settings,
    submit,
    wait_finished,
    wait_until,
)
from tests.webhooks.conftest import StartNotifier, notifier  # noqa: F401  (a fixture)

LIMIT = 64  # the smallest JOBQUEUE_HISTORY_LIMIT
SMALL_RESULT = 200


@pytest.fixture
def settings(servers: Servers, tmp_path: Path) -> Settings:
    return isolated_settings(servers.redis_url, servers.mongodb_url, tmp_path / "logs",
                             history_limit=LIMIT, webhook_max_result_bytes=SMALL_RESULT)


def fields(**extra: Any) -> dict[str, Any]:
    return {"_id": new_job_id(), "job_type": "echo", "payload": {}, "priority": "default",
            "max_retries": 100, "timeout_seconds": 5, "run_at": None, **extra}


def a_traceback(lines: int) -> str:
    return "".join(f'  File "handler.py", line {i}, in step_{i}\n' for i in range(lines))


async def test_history_keeps_its_first_and_last_entries_and_counts_the_rest(
        stores: Stores) -> None:
    now = stores.clock.now
    doc, _ = transitions.new_job(fields(history_limit=5), now())
    await stores.jobs.insert_one(doc)
    error = ErrorInfo(type="E", message="m", traceback=a_traceback(100))
    for i in range(20):  # PROCESSING, SCHEDULED, QUEUED per retry
        await transitions.change(stores.jobs, doc["_id"], lambda d, i=i: transitions.claim(
            d, entry_id=f"{i}-0", worker_id="w", now=now()))
        await transitions.change(stores.jobs, doc["_id"], lambda d: transitions.retry_later(
            d, error, now(), now()))
        await transitions.change(stores.jobs, doc["_id"],
                                 lambda d: transitions.requeue(d, now()))
    stored = await stores.jobs.find_one({"_id": doc["_id"]})
    assert stored is not None and stored["seq"] == 61
    assert len(stored["history"]) == 5
    assert stored["history"][-1]["status"] == "QUEUED"
    assert stored["history_first"]["event_id"] == doc["history"][0]["event_id"]
    public = from_doc(JobPublic, stored)
    assert public.history_dropped == 61 - 5 - 1
    assert [h.event_id for h in public.history] == [
        stored["history_first"]["event_id"], *[h["event_id"] for h in stored["history"]]]
    # a history entry's traceback is a short tail; the job's error a longer one
    for entry in stored["history"]:
        if entry.get("error"):
            tb = entry["error"]["traceback"]
            assert len(tb) <= 512 and tb.count("\n") <= 5 and tb.endswith("step_99\n")
    tb = stored["error"]["traceback"]
    assert len(tb) <= 8192 and tb.count("\n") <= 60 and tb.endswith("step_99\n")


async def test_a_short_history_is_shown_whole(stores: Stores) -> None:
    doc, _ = transitions.new_job(fields(), stores.clock.now())
    await stores.jobs.insert_one(doc)
    stored = await stores.jobs.find_one({"_id": doc["_id"]})
    public = from_doc(JobPublic, stored or {})
    assert len(public.history) == 1 and public.history_dropped == 0


async def test_deaths_are_still_counted_from_a_capped_history(stores: Stores) -> None:
    now = stores.clock.now
    doc, _ = transitions.new_job(fields(history_limit=LIMIT), now())
    await stores.jobs.insert_one(doc)
    for i in range(LIMIT + 10):  # runs whose workers died, one after the other
        await transitions.change(stores.jobs, doc["_id"], lambda d, i=i: transitions.claim(
            d, entry_id=f"{i}-0", worker_id="w", now=now()))
    stored = await stores.jobs.find_one({"_id": doc["_id"]})
    assert stored is not None and len(stored["history"]) == LIMIT
    assert died_runs(stored) == (LIMIT, 0)


async def test_many_retries_through_a_worker(api: httpx.AsyncClient, stores: Stores,
                                             background: Any, scheduler: Scheduler,
                                             tmp_path: Path) -> None:
    background()
    failures = 30  # 3 events each: more than LIMIT
    job = await submit(api, "flaky", {"path": str(tmp_path / "runs"), "failures": failures},
                       maxRetries=failures)
    doc = (await wait_finished(stores.jobs, [job], 120))[job]
    assert doc["status"] == "COMPLETED" and doc["seq"] == 1 + 3 * failures + 2
    assert len(doc["history"]) == LIMIT
    body = (await api.get(f"/jobs/{job}")).json()
    history = body["history"]
    assert len(history) == LIMIT + 1
    assert history[0]["status"] == "QUEUED" and history[0]["attempt"] == 0
    assert history[-1]["status"] == "COMPLETED"
    assert body["historyDropped"] == doc["seq"] - LIMIT - 1


def test_a_webhook_carries_a_small_result_or_where_to_fetch_it() -> None:
    assert webhook_result("job_1", {"a": 1}, 16) == {"result": {"a": 1}}
    assert webhook_result("job_1", "x" * 20, 16) == {"resultUrl": "/jobs/job_1",
                                                     "resultTruncated": True}


async def test_events_carry_no_result_and_webhooks_a_bounded_one(
        api: httpx.AsyncClient, stores: Stores, background: Any,
        notifier: StartNotifier) -> None:  # noqa: F811
    published: list[dict[str, Any]] = []
    pubsub = stores.redis.pubsub()
    await pubsub.subscribe(stores.queue.keys.events_channel)

    async def listen() -> None:
        async for message in pubsub.listen():
            if message["type"] == "message":
                published.append(json.loads(message["data"]))

    listening = asyncio.create_task(listen())
    try:
        background()
        notifier()
        with receiver() as hooks:
            url = hooks.on("/hook", 204)
            small = await submit(api, "echo", {"text": "hi"}, callbackUrl=url,
                                 callbackEvents=["job.completed"])
            big = await submit(api, "echo", {"text": "x" * 1000}, callbackUrl=url,
                               callbackEvents=["job.completed"])
            await wait_finished(stores.jobs, [small, big], 30)

            async def both() -> bool:
                return len(hooks.at("/hook")) >= 2

            await wait_until(both, 30, "two webhooks")
            got = {e["jobId"]: e for e in (
                Webhook(TEST_WEBHOOK_SECRET).verify(r.body, r.headers)
                for r in hooks.at("/hook"))}
        assert got[small]["data"] == {"result": {"text": "hi", "attempt": 1}}
        assert got[big]["data"] == {"resultUrl": f"/jobs/{big}", "resultTruncated": True}
        fetched = (await api.get(got[big]["data"]["resultUrl"])).json()
        assert fetched["result"]["text"] == "x" * 1000
        record = await stores.deliveries.find_one({"job_id": big})
        assert record is not None and "result" not in record["event"]["data"]

        async def completions() -> bool:
            return sum(e["type"] == "job.completed" for e in published) >= 2

        await wait_until(completions, 30, "the completions on the events channel")
        for event in published:
            assert "result" not in event["data"], event
    finally:
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)
        await pubsub.aclose()
