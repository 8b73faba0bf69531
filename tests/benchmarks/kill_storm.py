"""A kill storm, measured on demand (not part of the test suite):

    python -m tests.benchmarks.kill_storm [--jobs 2000] [--kills 125] [--workers 3]
                                          [--concurrency 10] [--seed 7]

Runs the same workload twice on embedded Redis and MongoDB: ``--jobs`` short ``count``
jobs (0.05 to 0.2 s each) drained by ``--workers`` worker processes, first with no storm
(the baseline), then with ``--kills`` SIGKILLs of random workers (each replaced at once)
spread over the first ~70% of the drain: a kill every N finished jobs, so the storm is
the same on a fast machine and a busy one. Reports:

- jobs FAILED (each an innocent: none of these jobs kills its worker; a PoisonPill
  here means the storm was mistaken for a poison pill), which must be 0;
- how many times each job ran (lines in its file), as a distribution;
- the drain rate (jobs/s) in the 30 s after the storm's last kill (or until the queue
  is empty), against the baseline's rate over the same stretch of jobs, and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pymongo import AsyncMongoClient

from services.dev.embedded import EmbeddedServer, start_mongodb, start_redis
from shared.status import TERMINAL
from tests.support import Service, isolated_settings, lines, spawn

TERMINAL_VALUES = [s.value for s in TERMINAL]
WINDOW_SECONDS = 30.0


@dataclass
class Run:
    storm: bool
    kills: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    executions: Counter[int] = field(default_factory=Counter)
    from_jobs: int = 0
    """Finished jobs when the measured stretch began (the storm's end)."""
    rate: float = 0.0
    """Jobs finished per second over the measured stretch."""
    total_seconds: float = 0.0


async def submit(url: str, bodies: list[dict[str, Any]]) -> list[str]:
    ids: list[str] = []
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        for i in range(0, len(bodies), 500):
            r = await client.post("/jobs/batch", json={"jobs": bodies[i:i + 500]})
            r.raise_for_status()
            ids += [j["jobId"] for j in r.json()["jobs"]]
    return ids


async def drain(redis: EmbeddedServer, mongo: EmbeddedServer, base: Path,
                args: argparse.Namespace, storm: bool, measure_from: int | None) -> Run:
    """One run; ``measure_from`` (baseline) is where the storm run's stretch began."""
    rng = random.Random(args.seed)
    settings = isolated_settings(redis.url, mongo.url, base / "logs")
    out = base / "out"
    runs = base / f"runs-{'storm' if storm else 'baseline'}"
    result = Run(storm)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo.url, tz_aware=True)
    jobs = client[settings.mongodb_database]["jobs"]
    services: list[Service] = [spawn("api", settings, out), spawn("scheduler", settings, out)]
    workers: list[Service] = []
    try:
        assert services[0].url
        bodies = [{"jobType": "count", "payload": {
            "path": str(runs), "seconds": round(rng.uniform(0.05, 0.2), 3)}}
            for _ in range(args.jobs)]
        ids = await submit(services[0].url, bodies)

        async def finished() -> int:
            return await jobs.count_documents({"status": {"$in": TERMINAL_VALUES}})

        workers = [spawn("worker", settings, out, "--concurrency", str(args.concurrency))
                   for _ in range(args.workers)]
        started = time.monotonic()
        step = max(1, int(0.7 * args.jobs / max(1, args.kills)))
        if storm:
            # NOTE: a kill waits for progress (step more jobs finished), so a storm that
            # has every worker restarting pauses itself instead of killing on and on.
            for k in range(1, args.kills + 1):
                while await finished() < k * step:
                    await asyncio.sleep(0.02)
                i = rng.randrange(len(workers))
                await asyncio.to_thread(workers[i].kill)
                workers[i] = spawn("worker", settings, out, "--concurrency",
                                   str(args.concurrency))
                result.kills += 1
        # The measured stretch: from the storm's end (the baseline: from the same count
        # of finished jobs) for 30 s, or until every job is finished.
        result.from_jobs = await finished() if measure_from is None else measure_from
        while await finished() < result.from_jobs:
            await asyncio.sleep(0.02)
        t0, n0 = time.monotonic(), await finished()
        while (n := await finished()) < args.jobs and time.monotonic() - t0 < WINDOW_SECONDS:
            await asyncio.sleep(0.05)
        result.rate = (n - n0) / max(time.monotonic() - t0, 1e-6)
        deadline = time.monotonic() + 600
        while await finished() < args.jobs and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        result.total_seconds = time.monotonic() - started
        async for d in jobs.find({"_id": {"$in": ids}}, {"status": 1, "error.type": 1}):
            result.statuses[d["status"]] += 1
            if d["status"] == "FAILED":
                result.errors[(d.get("error") or {}).get("type", "?")] += 1
        ran = Counter(lines(runs))
        result.executions = Counter(ran[i] for i in ids)
    finally:
        for s in services + workers:
            if s.process.poll() is None:
                s.signal(signal.SIGKILL)
                s.process.wait()
        await client.close()
    return result


def report(run: Run) -> str:
    name = f"storm ({run.kills} kills)" if run.storm else "baseline"
    return (f"{name}: {dict(run.statuses)}, FAILED by error {dict(run.errors)}, executions "
            f"{dict(sorted(run.executions.items()))}, drain {run.rate:.1f} jobs/s from "
            f"{run.from_jobs} finished, whole run {run.total_seconds:.1f}s")


async def main(args: argparse.Namespace) -> int:
    base = Path(tempfile.mkdtemp(prefix="kill-storm-"))
    redis = start_redis(base / "redis", persist=False)
    mongo = start_mongodb(base / "mongo")
    try:
        storm = await drain(redis, mongo, base / "storm", args, True, None)
        print(report(storm), flush=True)
        baseline = await drain(redis, mongo, base / "baseline", args, False, storm.from_jobs)
        print(report(baseline), flush=True)
    finally:
        redis.stop()
        mongo.stop()
    innocents = storm.statuses.get("FAILED", 0)
    print(f"innocents failed: {innocents} (must be 0); drain rate after the storm "
          f"{storm.rate:.1f} jobs/s vs baseline {baseline.rate:.1f} jobs/s: ratio "
          f"{storm.rate / baseline.rate if baseline.rate else float('nan'):.2f}")
    return 1 if innocents or storm.statuses.get("COMPLETED") != args.jobs else 0


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--kills", type=int, default=125)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--seed", type=int, default=7)
    raise SystemExit(asyncio.run(main(parser.parse_args())))


if __name__ == "__main__":
    cli()
