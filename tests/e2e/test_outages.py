"""Backing stores going away mid-run: nothing acknowledged is lost, everything
reconnects by itself."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient

from services.dev.embedded import start_mongodb, start_redis
from services.runtime import Stores
from shared.settings import Settings
from tests.faults import ThreadedProxy
from tests.support import lines, submit_many, wait_finished


async def test_redis_restart_empty_and_mongodb_restart_lose_nothing(
        services: Any, settings: Settings, tmp_path: Path) -> None:
    redis = start_redis(tmp_path / "own-redis", persist=False)
    mongo = start_mongodb(tmp_path / "own-mongo")
    own = settings.model_copy(update={"redis_url": redis.url, "mongodb_url": mongo.url})
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo.url)
    jobs = client[own.mongodb_database]["jobs"]
    path = tmp_path / "runs"
    try:
        api = services("api", with_settings=own)
        services("scheduler", with_settings=own)
        services("worker", "--concurrency", "4", with_settings=own)
        async with httpx.AsyncClient(base_url=api.url, timeout=30) as http:
            ids = await submit_many(http, [{"jobType": "count", "payload": {
                "path": str(path), "seconds": 0.3}} for _ in range(40)])
            ids += await submit_many(http, [{"jobType": "count", "payload": {
                "path": str(path)}, "delaySeconds": 2} for _ in range(10)])
        await asyncio.sleep(1)

        # Redis dies and comes back empty (no persistence), on the same port.
        redis.process.send_signal(signal.SIGKILL)
        redis.process.wait()
        redis = start_redis(tmp_path / "own-redis", persist=False, port=redis.port)
        await asyncio.sleep(1)

        # MongoDB goes away for a few seconds, then returns with its data.
        mongo.stop()
        await asyncio.sleep(3)
        mongo = start_mongodb(tmp_path / "own-mongo", port=mongo.port)

        docs = await wait_finished(jobs, ids, 60)
        assert Counter(d["status"] for d in docs.values()) == {"COMPLETED": 50}
        assert set(lines(path)) == set(ids)  # every job ran (at least once)
    finally:
        await client.close()
        redis.stop()
        mongo.stop()


@pytest.mark.parametrize("outage", ["stopped", "gone"])
async def test_api_answers_503_fast_when_mongodb_stops_answering(
        services: Any, settings: Settings, stores: Stores, outage: str) -> None:
    """MongoDB frozen (SIGSTOP: connections open, no answers) or gone (SIGKILL: every
    connection dropped): every request answers 503 within the 5 s target, under load,
    and nothing is half-stored."""
    assert settings.mongodb_url
    proxy = ThreadedProxy(settings.mongodb_url)
    own = settings.model_copy(update={"mongodb_url": proxy.url_for(settings.mongodb_url),
                                      "mongodb_timeout_seconds": 2.0})
    try:
        api = services("api", with_settings=own)
        async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
            first = await submit_many(client, [{"jobType": "echo", "payload": {"text": "a"}}
                                               for _ in range(5)])
            if outage == "stopped":
                proxy.set(blackhole=True)
            else:
                proxy.set(refusing=True)
                proxy.reset()

            async def timed(method: str, url: str, **kw: Any) -> tuple[int, float]:
                started = time.monotonic()
                r = await client.request(method, url, **kw)
                assert r.headers["content-type"].startswith("application/json"), r.text
                return r.status_code, time.monotonic() - started

            replies = await asyncio.gather(
                *(timed("POST", "/jobs", json={"jobType": "echo", "payload": {"text": "b"}})
                  for _ in range(30)),
                *(timed("GET", f"/job-status/{first[0]}") for _ in range(10)),
                *(timed("POST", f"/jobs/{first[1]}/cancel") for _ in range(5)))
            assert {status for status, _ in replies} == {503}
            assert max(seconds for _, seconds in replies) < 5.0
        proxy.set(blackhole=False, refusing=False)
        assert await stores.jobs.count_documents({}) == len(first)  # nothing half-stored
    finally:
        proxy.close()
