"""Peers on the same Redis, run on demand: how fast arq and RQ drain no-op jobs with one
worker process, for the ratios against ``tests.benchmarks.throughput``:

    python -m venv /tmp/peers && /tmp/peers/bin/pip install arq rq   # arq pins redis<6
    /tmp/peers/bin/python -m tests.benchmarks.peers --redis-url redis://127.0.0.1:6379/14

Context for the ratios: neither peer keeps a durable per-job record. jobqueue's drain
includes two conditional MongoDB updates per job (PROCESSING, then the outcome with its
history and events), and its entries survive a worker's death.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from redis import Redis

ROOT = Path(__file__).resolve().parents[2]


def timed_burst(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


async def arq_enqueue(url: str, jobs: int) -> None:
    from arq import create_pool
    from arq.connections import RedisSettings

    pool = await create_pool(RedisSettings.from_dsn(url))
    for start in range(0, jobs, 500):
        await asyncio.gather(*(pool.enqueue_job("noop") for _ in range(min(500, jobs - start))))
    await pool.aclose()


def bench_arq(url: str, jobs: int, env: dict[str, str]) -> float:
    asyncio.run(arq_enqueue(url, jobs))
    seconds = timed_burst([sys.executable, "-m", "arq",
                           "tests.benchmarks.peer_tasks.ArqSettings", "--burst"], env)
    return jobs / seconds


def bench_rq(url: str, jobs: int, env: dict[str, str], worker_class: str) -> float:
    from rq import Queue

    queue = Queue("bench", connection=Redis.from_url(url))
    queue.enqueue_many([Queue.prepare_data("tests.benchmarks.peer_tasks.rq_noop",
                                           result_ttl=0) for _ in range(jobs)])
    seconds = timed_burst([sys.executable, "-m", "rq.cli", "worker", "--burst", "--url", url,
                           "--worker-class", worker_class, "bench"], env)
    return jobs / seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--redis-url", required=True)
    args = parser.parse_args()
    env = {**os.environ, "BENCH_REDIS_URL": args.redis_url, "PYTHONPATH": str(ROOT)}
    redis = Redis.from_url(args.redis_url)
    runs = (("arq (asyncio, max_jobs=50)", lambda: bench_arq(args.redis_url, args.jobs, env)),
            ("rq SimpleWorker (no fork)", lambda: bench_rq(args.redis_url, args.jobs, env,
                                                           "rq.worker.SimpleWorker")),
            ("rq Worker (fork per job)", lambda: bench_rq(args.redis_url, min(args.jobs, 1000),
                                                          env, "rq.worker.Worker")))
    for name, run in runs:
        redis.flushdb()
        print(f"{name:32s} drain, 1 worker process: {run():8.0f} jobs/s", flush=True)
    redis.flushdb()


if __name__ == "__main__":
    main()
