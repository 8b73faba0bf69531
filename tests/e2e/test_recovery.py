"""Nothing accepted is lost: killed workers, poison pills, Redis losing everything,
several schedulers. Real processes, real servers."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from services.runtime import Stores
from services.worker.worker import SUSPECT_AFTER_DELIVERIES
from shared.status import TERMINAL
from tests.support import lines, submit_many, wait_finished, wait_until


def terminal_entries(doc: dict[str, Any]) -> list[str]:
    return [h["status"] for h in doc["history"] if h["status"] in {s.value for s in TERMINAL}]


async def test_sigkilled_worker_loses_nothing(services: Any, stores: Stores,
                                              tmp_path: Path) -> None:
    api = services("api")
    services("scheduler")
    victim = services("worker", "--concurrency", "4")
    path = tmp_path / "runs"
    async with httpx.AsyncClient(base_url=api.url) as client:
        ids = await submit_many(client, [{"jobType": "sleep",
                                          "payload": {"path": str(path), "seconds": 1.5}}
                                         for _ in range(4)])
        ids += await submit_many(client, [{"jobType": "echo", "payload": {"text": "x"}}
                                          for _ in range(6)])

    async def running() -> bool:
        return sum(x.startswith("start") for x in lines(path)) == 4

    await wait_until(running, 15, "4 jobs running")
    victim.kill()  # SIGKILL mid-job
    services("worker", "--concurrency", "4")
    docs = await wait_finished(stores.jobs, ids, 30)
    assert {d["status"] for d in docs.values()} == {"COMPLETED"}
    starts = Counter(x.split()[1] for x in lines(path) if x.startswith("start"))
    ends = Counter(x.split()[1] for x in lines(path) if x.startswith("end"))
    assert set(starts.values()) == {2} and set(ends.values()) == {1}  # killed once, rerun once
    for job in ids[:4]:
        assert docs[job]["attempt"] == 2 and docs[job]["retries"] == 0
        assert terminal_entries(docs[job]) == ["COMPLETED"]


async def test_kill_loop_500_jobs_all_complete(services: Any, stores: Stores,
                                               tmp_path: Path) -> None:
    api = services("api")
    services("scheduler")
    path = tmp_path / "runs"
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
        ids = await submit_many(client, [{"jobType": "count",
                                          "payload": {"path": str(path), "seconds": 0.2}}
                                         for _ in range(500)])
    workers = [services("worker", "--concurrency", "10") for _ in range(3)]
    finished: dict[str, str] = {}
    rng = random.Random(5)
    terminal = [s.value for s in TERMINAL]

    async def done_count() -> int:
        async for d in stores.jobs.find({"status": {"$in": terminal}}, {"status": 1}):
            assert finished.setdefault(d["_id"], d["status"]) == d["status"]  # never changes
        return len(finished)

    # NOTE: each kill waits for progress, not for time, and lands while work provably
    # remains, so the storm is the same on a fast machine and a busy one.
    kills = 0
    for step in range(1, 9):
        target = step * 50

        async def progressed(target: int = target) -> bool:
            return await done_count() >= target

        await wait_until(progressed, 60, f"{target} jobs finished")
        if len(ids) - await done_count() < 50:
            break
        i = rng.randrange(len(workers))
        workers[i].kill()
        workers[i] = services("worker", "--concurrency", "10")
        kills += 1
    docs = await wait_finished(stores.jobs, ids, 90)
    assert kills >= 3, kills
    assert Counter(d["status"] for d in docs.values()) == {"COMPLETED": 500}
    assert set(Counter(lines(path))) == set(ids)
    assert all(terminal_entries(d) == ["COMPLETED"] for d in docs.values())


async def test_poison_pill_fails_after_bounded_deliveries(services: Any, stores: Stores,
                                                         tmp_path: Path) -> None:
    api = services("api")
    services("scheduler")
    workers = [services("worker", "--concurrency", "2") for _ in range(2)]
    path = tmp_path / "crash"
    async with httpx.AsyncClient(base_url=api.url) as client:
        r = await client.post("/jobs", json={"jobType": "crash",
                                             "payload": {"path": str(path)}})
        poison = r.json()["jobId"]
        others = await submit_many(client, [{"jobType": "echo", "payload": {"text": "ok"}}
                                            for _ in range(20)])

    async def keep_workers_up() -> None:
        while True:
            for i, w in enumerate(workers):
                if w.process.poll() is not None:
                    workers[i] = services("worker", "--concurrency", "2")
            await asyncio.sleep(0.3)

    keeper = asyncio.create_task(keep_workers_up())
    try:
        docs = await wait_finished(stores.jobs, [poison, *others], 60)
    finally:
        keeper.cancel()
    assert docs[poison]["status"] == "FAILED"
    assert docs[poison]["error"]["type"] == "PoisonPill"
    # max_deliveries (3 in the test settings) deaths while running alone, after the
    # deaths that made it a suspect
    assert len(lines(path)) == 3 + SUSPECT_AFTER_DELIVERIES
    assert all(docs[o]["status"] == "COMPLETED" for o in others)


async def test_flushall_loses_nothing(services: Any, stores: Stores, tmp_path: Path) -> None:
    api = services("api")
    async with httpx.AsyncClient(base_url=api.url) as client:
        now = await submit_many(client, [{"jobType": "echo", "payload": {"text": "q"}}
                                         for _ in range(20)])
        later = await submit_many(client, [{"jobType": "echo", "payload": {"text": "d"},
                                            "delaySeconds": 2} for _ in range(10)])
    # Redis forgets everything this queue held (as FLUSHALL or a restart would).
    keys = [k async for k in stores.redis.scan_iter(f"{stores.queue.keys.prefix}:*")]
    assert keys
    await stores.redis.delete(*keys)
    services("scheduler")
    services("worker")
    docs = await wait_finished(stores.jobs, now + later, 40)
    assert {d["status"] for d in docs.values()} == {"COMPLETED"}


async def test_two_schedulers_enqueue_each_due_job_once(services: Any, stores: Stores,
                                                        tmp_path: Path) -> None:
    api = services("api")
    services("scheduler")
    services("scheduler")
    services("worker", "--concurrency", "10")
    path = tmp_path / "runs"
    async with httpx.AsyncClient(base_url=api.url) as client:
        ids = await submit_many(client, [{"jobType": "count", "payload": {"path": str(path)},
                                          "delaySeconds": 1 + i / 50} for i in range(100)])
    docs = await wait_finished(stores.jobs, ids, 40)
    assert {d["status"] for d in docs.values()} == {"COMPLETED"}
    assert Counter(lines(path)) == Counter(ids)
    for d in docs.values():
        assert [h["status"] for h in d["history"]] == ["SCHEDULED", "QUEUED", "PROCESSING",
                                                       "COMPLETED"]


