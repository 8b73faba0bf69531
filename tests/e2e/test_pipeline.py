"""The core pipeline through real processes: HTTP → MongoDB + Redis → workers → status."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from pymongo import AsyncMongoClient

from services.dev.embedded import start_mongodb
from services.runtime import Stores
from shared.settings import Settings
from tests.support import lines, settings_env, submit_many, wait_finished, wait_until


async def test_200_jobs_across_two_workers_each_run_exactly_once(
        services: Any, stores: Stores, tmp_path: Path) -> None:
    api = services("api")
    services("worker", "--concurrency", "8")
    services("worker", "--concurrency", "8")
    services("scheduler")
    runs = tmp_path / "runs"
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
        ids = await submit_many(client, [{"jobType": "count", "payload": {"path": str(runs)}}
                                         for _ in range(200)])
        docs = await wait_finished(stores.jobs, ids, 60)
        assert Counter(d["status"] for d in docs.values()) == {"COMPLETED": 200}
        assert Counter(lines(runs)) == Counter(ids)  # each ran once, none twice
        workers = {d["worker_id"] for d in docs.values()}
        assert len(workers) == 2  # both processes took work
        status = (await client.get(f"/job-status/{ids[0]}")).json()
        assert status["status"] == "COMPLETED" and status["retries"] == 0


async def test_sigterm_drains_in_flight_jobs(services: Any, stores: Stores,
                                             tmp_path: Path) -> None:
    api = services("api")
    worker = services("worker", "--concurrency", "4")
    path = tmp_path / "sleeps"
    async with httpx.AsyncClient(base_url=api.url) as client:
        ids = await submit_many(client, [{"jobType": "sleep",
                                          "payload": {"path": str(path), "seconds": 2}}
                                         for _ in range(4)])

    async def all_started() -> bool:
        return sum(line.startswith("start") for line in lines(path)) == 4

    await wait_until(all_started, 15, "4 jobs to start")
    stopped = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert await asyncio.to_thread(worker.process.wait, 20) == 0
    assert time.monotonic() - stopped < 10
    docs = await wait_finished(stores.jobs, ids, 1)
    assert {d["status"] for d in docs.values()} == {"COMPLETED"}
    assert sum(line.startswith("end") for line in lines(path)) == 4


async def test_user_module_from_handler_modules(services: Any, settings: Settings,
                                                stores: Stores, tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "acme_jobs.py").write_text(
        "from pydantic import BaseModel\n"
        "from shared.jobtypes import job_type, JobContext\n\n"
        "class Shout(BaseModel):\n    text: str\n\n"
        "@job_type('shout', payload=Shout, max_retries=0)\n"
        "async def shout(payload: Shout, ctx: JobContext) -> dict:\n"
        "    return {'text': payload.text.upper(), 'jobId': ctx.job_id}\n")
    custom = settings.model_copy(update={"handler_modules": ["acme_jobs"]})
    env = settings_env(custom, PYTHONPATH=str(plugins))
    api = services("api", env=env)
    services("worker", env=env)
    async with httpx.AsyncClient(base_url=api.url) as client:
        r = await client.post("/jobs", json={"jobType": "shout", "payload": {"text": "hi"}})
        assert r.status_code == 202
        job = r.json()["jobId"]
        assert (await client.post("/jobs", json={"jobType": "echo",
                                                 "payload": {"text": "x"}})).status_code == 422
    doc = (await wait_finished(stores.jobs, [job], 20))[job]
    assert doc["result"] == {"text": "HI", "jobId": job} and doc["max_retries"] == 0


async def test_logs_are_json_lines_naming_the_job(services: Any, stores: Stores,
                                                  settings: Settings) -> None:
    api = services("api")
    worker = services("worker")
    async with httpx.AsyncClient(base_url=api.url) as client:
        r = await client.post("/jobs", json={"jobType": "echo", "payload": {"text": "log"}})
        job = r.json()["jobId"]
    await wait_finished(stores.jobs, [job], 20)
    worker.stop()
    records = [json.loads(line) for line in
               (settings.log_dir / "worker.log").read_text().splitlines()]
    assert all({"ts", "level", "service", "event"} <= r.keys() for r in records)
    about = [r for r in records if r.get("jobId") == job]
    # one start and one end line, and what the handler logs in between names the job too
    assert [r["event"] for r in about] == ["job.started", "echo", "job.finished"]
    for r in about:
        assert r["jobType"] == "echo" and r["attempt"] == 1 and r["workerId"]
    assert about[-1]["durationMs"] >= 0 and about[-1]["status"] == "COMPLETED"
    stdout_lines = [json.loads(x) for x in worker.output.read_text().splitlines() if x]
    assert any(r.get("jobId") == job for r in stdout_lines)


async def test_mongodb_down_means_503_and_nothing_stored(
        services: Any, settings: Settings, tmp_path: Path) -> None:
    data = tmp_path / "own-mongo"
    mongo = start_mongodb(data)
    own = settings.model_copy(update={"mongodb_url": mongo.url})
    api = services("api", with_settings=own)
    try:
        async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
            body = {"jobType": "echo", "payload": {"text": "x"}}
            assert (await client.post("/jobs", json=body)).status_code == 202
            mongo.stop()
            started = time.monotonic()
            r = await client.post("/jobs", json=body)
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "store_unavailable"
            assert time.monotonic() - started < 6
            assert (await client.get("/readyz")).status_code == 503
        mongo = start_mongodb(data, port=mongo.port)
        client2: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo.url)
        assert await client2[own.mongodb_database]["jobs"].count_documents({}) == 1
        await client2.close()
    finally:
        mongo.stop()
