"""A worker's life as a process: killed while its job was being cancelled, and stopped
gracefully again and again during one long job. Real processes, real servers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from services.runtime import Stores
from tests.support import lines, wait_finished, wait_until


async def test_a_cancelled_job_whose_worker_died_ends_cancelled(
        services: Any, stores: Stores, tmp_path: Path) -> None:
    api = services("api")
    victim = services("worker")
    path = tmp_path / "runs"
    async with httpx.AsyncClient(base_url=api.url) as client:
        r = await client.post("/jobs", json={"jobType": "sleep",
                                             "payload": {"path": str(path), "seconds": 3}})
        job = r.json()["jobId"]

        async def started() -> bool:
            return bool(lines(path))

        await wait_until(started, 20, "the job to start")
        victim.kill()
        r = await client.post(f"/jobs/{job}/cancel")
        assert r.status_code == 202
    services("scheduler")
    services("worker")
    doc = (await wait_finished(stores.jobs, [job], 40))[job]
    assert doc["status"] == "CANCELLED"
    assert sum(x.startswith("end") for x in lines(path)) == 0


async def test_a_graceful_stop_hands_the_run_back_without_counting_it(
        services: Any, stores: Stores, settings: Any, tmp_path: Path) -> None:
    """Rolling restarts during a long job, more than the poison-pill cap: the job is
    handed back each time (not a death), and queued again at once."""
    api = services("api")
    path = tmp_path / "runs"
    quick_stop = settings.model_copy(update={"shutdown_grace_seconds": 0.2})
    async with httpx.AsyncClient(base_url=api.url) as client:
        r = await client.post("/jobs", json={"jobType": "sleep",
                                             "payload": {"path": str(path), "seconds": 60}})
        job = r.json()["jobId"]
    restarts = settings.max_deliveries + 3
    for n in range(1, restarts + 1):
        worker = services("worker", with_settings=quick_stop)

        async def running(n: int = n) -> bool:
            return sum(x.startswith("start") for x in lines(path)) >= n

        await wait_until(running, 30, f"run {n} to start")
        assert worker.stop() == 0
        doc = await stores.jobs.find_one({"_id": job})
        assert doc is not None and doc["status"] == "QUEUED"
        assert doc["history"][-1].get("interrupted") is True
        # released at once: a fresh entry waits in the stream, nothing is left pending
        keys = stores.queue.keys
        entry = await stores.redis.hget(keys.held, job)
        assert entry and await stores.redis.xrange(keys.stream("default"), entry, entry)
        pending = await stores.redis.xpending(keys.stream("default"), "workers")
        assert pending["pending"] == 0
    services("scheduler")
    services("worker", with_settings=quick_stop)

    async def running_again() -> bool:
        return sum(x.startswith("start") for x in lines(path)) > restarts

    await wait_until(running_again, 30, "the job to run again")
    doc = await stores.jobs.find_one({"_id": job})
    assert doc is not None and doc["status"] == "PROCESSING"
