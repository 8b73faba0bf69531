"""Throughput on real servers, run on demand (not part of the test suite):

    python -m tests.benchmarks.throughput [--jobs 5000] [--redis-url URL] [--mongodb-url URL]

Measures, with no-op jobs: submits per second over HTTP to one API process, and jobs
drained per second (QUEUED -> COMPLETED, outcome stored) by 1 and by 2 worker processes.
Uses embedded Redis and MongoDB unless URLs are given.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import httpx
from pymongo import AsyncMongoClient

from tests.benchmarks.servers import stores_for
from tests.support import isolated_settings, spawn


async def measure_submits(url: str, jobs: int, concurrency: int) -> float:
    gate = asyncio.Semaphore(concurrency)
    body = {"jobType": "echo", "payload": {"text": "x"}}
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        async def one() -> None:
            async with gate:
                r = await client.post("/submit-job", json=body)
                r.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(jobs)))
        return jobs / (time.perf_counter() - started)


async def preload(url: str, jobs: int) -> None:
    body = {"jobs": [{"jobType": "echo", "payload": {"text": "x"}}] * 500}
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        for _ in range(jobs // 500):
            (await client.post("/jobs/batch", json=body)).raise_for_status()


async def measure_drain(args: argparse.Namespace, redis_url: str, mongodb_url: str,
                        out: Path, workers: int) -> float:
    settings = isolated_settings(redis_url, mongodb_url, out / "logs",
                                 concurrency=args.concurrency, log_level="WARNING")
    api = spawn("api", settings, out)
    try:
        await preload(api.url or "", args.jobs)
    finally:
        api.stop()
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(mongodb_url)
    jobs = client[settings.mongodb_database]["jobs"]
    started = time.perf_counter()
    procs = [spawn("worker", settings, out) for _ in range(workers)]
    try:
        # NOTE: polled gently; a count over every job is itself load on the server
        while await jobs.count_documents({"status": "COMPLETED"}) < args.jobs:
            await asyncio.sleep(0.5)
        return args.jobs / (time.perf_counter() - started)
    finally:
        for p in procs:
            p.stop()
        await client.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--http-concurrency", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=50, help="per worker process")
    parser.add_argument("--redis-url")
    parser.add_argument("--mongodb-url")
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="jq-bench-"))
    with stores_for(args, out):
        settings = isolated_settings(args.redis_url, args.mongodb_url, out / "logs",
                                     log_level="WARNING")
        api = spawn("api", settings, out)
        try:
            await measure_submits(api.url or "", 300, args.http_concurrency)  # warm-up
            submits = await measure_submits(api.url or "", args.jobs, args.http_concurrency)
        finally:
            api.stop()
        print(f"submit over HTTP (1 API process): {submits:8.0f} jobs/s")
        for workers in (1, 2):
            rate = await measure_drain(args, args.redis_url, args.mongodb_url, out, workers)
            print(f"drain with {workers} worker process(es): {rate:8.0f} jobs/s")

if __name__ == "__main__":
    asyncio.run(main())
