"""The worker in-process (burst mode and background), with the API and scheduler, on
real servers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from services.runtime import Stores
from services.scheduler.scheduler import Scheduler
from tests.support import lines, submit, wait_finished, wait_until


async def test_burst_worker_completes_jobs(api: httpx.AsyncClient, stores: Stores,
                                           make_worker: Any) -> None:
    ids = [await submit(api, "echo", {"text": str(i)}) for i in range(25)]
    await make_worker(concurrency=4).run(burst=True)
    docs = await wait_finished(stores.jobs, ids, 5)
    assert {d["status"] for d in docs.values()} == {"COMPLETED"}
    assert docs[ids[3]]["result"] == {"text": "3", "attempt": 1}
    assert [h["status"] for h in docs[ids[0]]["history"]] == ["QUEUED", "PROCESSING",
                                                              "COMPLETED"]
    # every entry is acknowledged and deleted once its outcome is stored
    assert await stores.redis.xlen(stores.queue.keys.stream("default")) == 0
    assert await stores.redis.hlen(stores.queue.keys.held) == 0


async def test_high_priority_runs_first(api: httpx.AsyncClient, stores: Stores,
                                        make_worker: Any, tmp_path: Path) -> None:
    path = str(tmp_path / "order")
    low = [await submit(api, "count", {"path": path}, priority="low") for _ in range(3)]
    high = [await submit(api, "count", {"path": path}, priority="high") for _ in range(3)]
    await make_worker(concurrency=1).run(burst=True)
    assert lines(tmp_path / "order") == high + low


async def test_blocking_handler_does_not_stall_others(
        api: httpx.AsyncClient, stores: Stores, make_worker: Any, tmp_path: Path) -> None:
    blocker = await submit(api, "blocking", {"path": str(tmp_path / "b"), "seconds": 1.5})
    quick = [await submit(api, "echo", {"text": "q"}) for _ in range(5)]
    await make_worker(concurrency=6).run(burst=True)
    docs = await wait_finished(stores.jobs, [blocker, *quick], 5)
    assert all(docs[q]["finished_at"] < docs[blocker]["finished_at"] for q in quick)


async def test_flaky_job_retries_then_completes(api: httpx.AsyncClient, stores: Stores,
                                                background: Any, scheduler: Scheduler,
                                                tmp_path: Path) -> None:
    background()
    job = await submit(api, "flaky", {"path": str(tmp_path / "f"), "failures": 2})
    doc = (await wait_finished(stores.jobs, [job], 15))[job]
    assert doc["status"] == "COMPLETED" and doc["retries"] == 2
    assert len(lines(tmp_path / "f")) == 3
    assert [h["status"] for h in doc["history"]] == [
        "QUEUED", "PROCESSING", "SCHEDULED", "QUEUED", "PROCESSING", "SCHEDULED", "QUEUED",
        "PROCESSING", "COMPLETED"]
    assert doc["history"][2]["error"]["message"] == "failure 1 of 2"


async def test_retries_are_bounded_and_permanent_errors_fail_at_once(
        api: httpx.AsyncClient, stores: Stores, background: Any, scheduler: Scheduler,
        tmp_path: Path) -> None:
    background()
    always = await submit(api, "always_fails", {"path": str(tmp_path / "a")}, maxRetries=2)
    perm = await submit(api, "permanent", {"path": str(tmp_path / "p")}, maxRetries=5)
    docs = await wait_finished(stores.jobs, [always, perm], 15)
    assert docs[always]["status"] == "FAILED" and len(lines(tmp_path / "a")) == 3
    assert docs[always]["retries"] == 2
    assert docs[always]["error"]["type"] == "ValueError"
    assert "this job always fails" in docs[always]["error"]["traceback"]
    assert docs[perm]["status"] == "FAILED" and len(lines(tmp_path / "p")) == 1
    assert docs[perm]["error"]["type"] == "PermanentError"


async def test_retry_with_chosen_delay(api: httpx.AsyncClient, stores: Stores,
                                       background: Any, scheduler: Scheduler,
                                       tmp_path: Path) -> None:
    background()
    job = await submit(api, "retry_after", {"path": str(tmp_path / "r"), "failures": 1,
                                            "delay": 1.0})
    doc = (await wait_finished(stores.jobs, [job], 15))[job]
    assert doc["status"] == "COMPLETED"
    first, second = (float(x) for x in lines(tmp_path / "r"))
    assert second - first >= 0.95


async def test_timeout_is_recorded_then_retried_then_failed(
        api: httpx.AsyncClient, stores: Stores, background: Any, scheduler: Scheduler,
        tmp_path: Path) -> None:
    background(concurrency=1)
    job = await submit(api, "slow", {"path": str(tmp_path / "s"), "seconds": 30})
    after = await submit(api, "echo", {"text": "slot freed"})
    docs = await wait_finished(stores.jobs, [job, after], 15)
    assert docs[job]["status"] == "FAILED" and docs[job]["error"]["type"] == "JobTimeout"
    assert len(lines(tmp_path / "s")) == 2  # type default max_retries=1: two runs
    assert docs[after]["status"] == "COMPLETED"


async def test_delayed_job_waits(api: httpx.AsyncClient, stores: Stores, background: Any,
                                 scheduler: Scheduler) -> None:
    background()
    job = await submit(api, "echo", {"text": "later"}, delaySeconds=1)
    await asyncio.sleep(0.5)
    assert (await stores.jobs.find_one({"_id": job}))["status"] == "SCHEDULED"
    doc = (await wait_finished(stores.jobs, [job], 10))[job]
    assert doc["status"] == "COMPLETED"
    assert doc["started_at"] >= doc["created_at"]
    assert (doc["started_at"] - doc["created_at"]).total_seconds() >= 0.95


async def test_cancel_in_each_state(api: httpx.AsyncClient, stores: Stores,
                                    background: Any, scheduler: Scheduler,
                                    tmp_path: Path) -> None:
    queued = await submit(api, "echo", {"text": "q"})
    delayed = await submit(api, "echo", {"text": "d"}, delaySeconds=60)
    for job in (queued, delayed):
        r = await api.post(f"/jobs/{job}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "CANCELLED"
    assert await stores.redis.zcard(stores.queue.keys.scheduled) == 0

    background()
    path = tmp_path / "run"
    running = await submit(api, "sleep", {"path": str(path), "seconds": 30})
    await wait_until(lambda: _started(path), 10, "the job to start")
    r = await api.post(f"/jobs/{running}/cancel")
    assert r.status_code == 202
    docs = await wait_finished(stores.jobs, [queued, running], 10)
    assert docs[running]["status"] == "CANCELLED" and docs[queued]["status"] == "CANCELLED"
    assert len(lines(path)) == 1  # started, never finished

    r = await api.post(f"/jobs/{running}/cancel")
    assert r.status_code == 409 and r.json()["error"]["code"] == "illegal_transition"

    r = await api.post(f"/jobs/{queued}/retry")
    assert r.status_code == 202 and r.json()["status"] == "QUEUED"
    doc = (await wait_finished(stores.jobs, [queued], 10))[queued]
    assert doc["status"] == "COMPLETED"
    assert (await api.post(f"/jobs/{queued}/retry")).status_code == 409


async def _started(path: Path) -> bool:
    return bool(lines(path))


async def test_idempotent_submits(api: httpx.AsyncClient, stores: Stores) -> None:
    body = {"jobType": "echo", "payload": {"text": "once"}, "idempotencyKey": "order-42"}
    replies = await asyncio.gather(*(api.post("/jobs", json=body) for _ in range(20)))
    ids = {r.json()["jobId"] for r in replies}
    assert len(ids) == 1
    assert sorted(r.status_code for r in replies) == [200] * 19 + [202]
    assert await stores.jobs.count_documents({}) == 1

    again = await api.post("/jobs", json={"jobType": "echo", "payload": {"text": "once"}},
                           headers={"Idempotency-Key": "order-42"})
    assert again.status_code == 200 and again.json()["jobId"] in ids
    other = await api.post("/jobs", json={**body, "payload": {"text": "different"}})
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_conflict"
    assert await stores.jobs.count_documents({}) == 1
