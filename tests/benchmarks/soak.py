"""Soak: a steady stream of jobs with a short retention, to show that storage levels off.
Run on demand (not part of the test suite):

    python -m tests.benchmarks.soak [--rate 200] [--minutes 30] [--retention 60]
        [--sample-seconds 10] [--workers 2] [--csv soak.csv]
        [--redis-url URL] [--mongodb-url URL]

Starts (unless URLs are given) an embedded Redis and MongoDB, then real API, worker,
scheduler and notifier processes, and submits ``--rate`` jobs a second for ``--minutes``:
mostly ``echo``, with some that fail (their errors and tracebacks are stored), some
that make an artifact (``generateReport``, GridFS) and some with a webhook to a local
receiver (delivery log). Every ``--sample-seconds`` it records the MongoDB documents
(jobs, webhook deliveries, GridFS files and chunks), the Redis keys and memory, and each
process's resident memory (children included), prints a row and appends it to the CSV.
At the end it compares the last third of the run with the middle third: with retention
working, every count stops growing once the first jobs expire (``finished``: the
finished jobs still kept; ``active``: the backlog, which grows only when the machine
cannot run ``--rate`` jobs a second).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from shared.settings import Settings
from tests.benchmarks.servers import stores_for
from tests.receiver import receiver
from tests.support import Service, isolated_settings, spawn

TICK_SECONDS = 0.1
REPORT = {"format": "csv", "title": "soak", "columns": ["a", "b"], "rows": [["1", "2"]]}
COLLECTIONS = ("jobs", "webhook_deliveries", "artifacts.files", "artifacts.chunks")


def job_body(rng: random.Random, hook: str, runs: str) -> dict[str, Any]:
    """One job of the mix: 80% echo, 8% webhook, 6% failing, 6% artifact."""
    roll = rng.random()
    if roll < 0.08:
        return {"jobType": "echo", "payload": {"text": "hooked"}, "callbackUrl": hook}
    if roll < 0.14:
        return {"jobType": "always_fails", "payload": {"path": runs}, "maxRetries": 1}
    if roll < 0.20:
        return {"jobType": "generateReport", "payload": REPORT}
    return {"jobType": "echo", "payload": {"text": "x" * 100}}


def rss_kib(pid: int) -> int:
    """Resident memory of a process and all its descendants (Linux /proc), in KiB."""
    total = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
        for task in Path(f"/proc/{pid}/task").iterdir():
            children = (task / "children").read_text().split()
            total += sum(rss_kib(int(child)) for child in children)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return total


@dataclass
class Load:
    """Submits ``rate`` jobs a second in batches, one batch per tick."""

    client: httpx.AsyncClient
    rate: float
    hook: str
    runs: str
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    submitted: int = 0
    refused: int = 0
    behind_ticks: int = 0

    async def run(self, seconds: float) -> None:
        started = time.monotonic()
        tick = 0
        while (elapsed := time.monotonic() - started) < seconds:
            count = min(int(self.rate * elapsed) - self.submitted - self.refused, 1000)
            if count > 0:
                await self._send(count)
            tick += 1
            pause = started + tick * TICK_SECONDS - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
            else:
                self.behind_ticks += 1

    async def _send(self, count: int) -> None:
        body = {"jobs": [job_body(self.rng, self.hook, self.runs) for _ in range(count)]}
        try:
            r = await self.client.post("/jobs/batch", json=body)
            if r.status_code == 202:
                self.submitted += count
                return
            print(f"batch refused: {r.status_code} {r.text[:200]}", file=sys.stderr)
        except httpx.HTTPError as exc:
            print(f"batch failed: {exc!r}", file=sys.stderr)
        self.refused += count


async def redis_keys(redis: Redis, prefix: str) -> int:
    count = 0
    async for _ in redis.scan_iter(match=f"{prefix}:*", count=1000):
        count += 1
    return count


async def sample(settings: Settings, mongo: AsyncMongoClient[dict[str, Any]], redis: Redis,
                 processes: dict[str, int], load: Load, started: float) -> dict[str, Any]:
    db = mongo[settings.mongodb_database]
    row: dict[str, Any] = {"t_s": round(time.monotonic() - started),
                           "submitted": load.submitted, "refused": load.refused}
    for name in COLLECTIONS:
        row[name] = await db[name].estimated_document_count()
    row["active"] = await db["jobs"].count_documents(
        {"status": {"$in": ["QUEUED", "PROCESSING", "SCHEDULED"]}})
    row["finished"] = row["jobs"] - row["active"]  # what retention bounds
    row["redis_keys"] = await redis_keys(redis, settings.redis_prefix)
    memory = await redis.info("memory")
    row["redis_used_mib"] = round(memory["used_memory"] / 2**20, 1)
    for name, pid in processes.items():
        row[f"rss_{name}_mib"] = round(rss_kib(pid) / 1024, 1)
    return row


def level_verdict(rows: list[dict[str, Any]]) -> list[str]:
    """For each measure: the middle third's and the last third's highest value, and
    whether it stopped growing (last at most 10% and a little above middle)."""
    if len(rows) < 6:
        return ["too few samples to judge"]
    third = len(rows) // 3
    middle, last = rows[third:2 * third], rows[2 * third:]
    lines = []
    if max(float(r["active"]) for r in last) > 2 * max(float(r["active"]) for r in middle) + 100:
        lines.append("NOTE: the backlog (active) grew: this machine does not run --rate jobs "
                     "a second, so jobs and MongoDB grow with the backlog, not for want of "
                     "retention; judge by 'finished', or lower --rate")
    for key in rows[0]:
        if key in ("t_s", "submitted", "refused"):
            continue
        mid_max = max(float(r[key]) for r in middle)
        last_max = max(float(r[key]) for r in last)
        slack = 2.0 if key.endswith("_mib") else 50.0
        flat = last_max <= mid_max * 1.10 + slack
        lines.append(f"{key:28} middle max {mid_max:12.1f}   last max {last_max:12.1f}   "
                     f"{'levelled off' if flat else 'STILL GROWING'}")
    return lines


async def soak(args: argparse.Namespace, out: Path) -> None:
    settings = isolated_settings(
        args.redis_url, args.mongodb_url, out / "logs", log_level="WARNING",
        retention_seconds=args.retention,
        retention_sweep_interval_seconds=min(10.0, max(args.retention / 4, 1.0)),
        visibility_timeout_seconds=30.0, concurrency=args.concurrency,
        mongodb_timeout_seconds=10.0,
        webhook_retry_schedule=[1, 5])
    services: list[Service] = []
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(args.mongodb_url)
    redis = Redis.from_url(args.redis_url, decode_responses=True)
    rows: list[dict[str, Any]] = []
    try:
        with receiver() as hooks:
            hook = hooks.on("/hook", 204)
            api = spawn("api", settings, out)
            services.append(api)
            for i in range(args.workers):
                services.append(spawn("worker", settings, out))
                services[-1].name = f"worker{i + 1}"
            services += [spawn("scheduler", settings, out), spawn("notifier", settings, out)]
            processes = {s.name: s.process.pid for s in services}
            processes.update(args.server_pids)
            limits = httpx.Limits(max_connections=8)
            async with httpx.AsyncClient(base_url=api.url or "", timeout=60,
                                         limits=limits) as client:
                load = Load(client, args.rate, hook, str(out / "runs"))
                started = time.monotonic()
                submitting = asyncio.create_task(load.run(args.minutes * 60))
                with Path(args.csv).open("w", newline="") as f:  # noqa: ASYNC230
                    writer: csv.DictWriter[str] | None = None
                    while True:
                        row = await sample(settings, mongo, redis, processes, load, started)
                        rows.append(row)
                        if writer is None:
                            writer = csv.DictWriter(f, fieldnames=list(row))
                            writer.writeheader()
                            print(" ".join(f"{k:>10.10}" for k in row))
                        writer.writerow(row)
                        f.flush()
                        print(" ".join(f"{v!s:>10.10}" for v in row.values()), flush=True)
                        if submitting.done():
                            break
                        await asyncio.sleep(args.sample_seconds)
                await submitting
                dead = [s.name for s in services if s.process.poll() is not None]
                print(f"\nsubmitted {load.submitted} jobs ({load.refused} refused) in "
                      f"{args.minutes} min; load fell behind on {load.behind_ticks} ticks; "
                      f"processes that exited: {dead or 'none'}; CSV: {args.csv}")
                print("\n".join(level_verdict(rows)))
    finally:
        for s in services:
            try:
                s.stop(timeout=60)
            except Exception as exc:  # stopped anyway (killed): report and go on
                print(f"{s.name} did not stop cleanly: {exc!r}", file=sys.stderr)
        await redis.aclose()
        await mongo.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=200.0, help="jobs submitted a second")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--retention", type=float, default=60.0,
                        help="JOBQUEUE_RETENTION_SECONDS for the run")
    parser.add_argument("--sample-seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=50, help="per worker process")
    parser.add_argument("--csv", default="soak.csv")
    parser.add_argument("--redis-url")
    parser.add_argument("--mongodb-url")
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="jq-soak-"))
    with stores_for(args, out) as servers:
        args.server_pids = {s.name: s.process.pid for s in servers}
        print(f"soak: {args.rate:g} jobs/s for {args.minutes:g} min, retention "
              f"{args.retention:g} s, {args.workers} workers; output under {out}")
        await soak(args, out)

if __name__ == "__main__":
    asyncio.run(main())
