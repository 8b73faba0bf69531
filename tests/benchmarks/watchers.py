"""What live-status watchers cost one API process, run on demand (not part of the suite):

    python -m tests.benchmarks.watchers [--watchers 1000] [--jobs 50] [--redis-url URL]
                                        [--mongodb-url URL]

Spawns a real ``jobqueue api`` process and measures, without watchers and then with
``--watchers`` open SSE streams (spread over ``--jobs`` scheduled jobs, and held by a
second process so that their client work does not slow the measuring one): p50/p99 latency
of submits (10 at a time) and of ``/readyz`` (one at a time), and the API's resident
memory. Then it cancels every watched job and measures how long after each cancel was
answered its streams had their ``job.cancelled`` event (negative: before), and measures
the latencies once more with the streams closed, to show how noisy the host is.
Uses embedded Redis and MongoDB unless URLs are given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from tests.benchmarks.servers import stores_for
from tests.support import isolated_settings, spawn

SUBMITS = 1000
READYZ = 300


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentiles(samples: list[float]) -> str:
    cuts = statistics.quantiles(samples, n=100)
    return f"p50 {cuts[49] * 1000:7.1f} ms   p99 {cuts[98] * 1000:7.1f} ms"


async def timed(client: httpx.AsyncClient, method: str, path: str, expect: int,
                **kwargs: object) -> float:
    started = time.perf_counter()
    r = await client.request(method, path, **kwargs)  # type: ignore[arg-type]
    elapsed = time.perf_counter() - started
    if r.status_code != expect:
        raise RuntimeError(f"{method} {path}: {r.status_code} {r.text[:200]}")
    return elapsed


async def latencies(client: httpx.AsyncClient) -> tuple[list[float], list[float]]:
    gate = asyncio.Semaphore(10)
    body = {"jobType": "echo", "payload": {"text": "x"}}

    async def submit() -> float:
        async with gate:
            return await timed(client, "POST", "/submit-job", 202, json=body)

    submits = list(await asyncio.gather(*(submit() for _ in range(SUBMITS))))
    readyz = [await timed(client, "GET", "/readyz", 200) for _ in range(READYZ)]
    return submits, readyz


async def hold(url: str, job_ids: list[str], watchers: int) -> None:
    """The watchers, in a process of their own (so their client work does not slow the
    measuring client): prints ``open <seconds>`` once every stream has its status event,
    then, when every stream has its ``job.cancelled``, a JSON list of [jobId, wall time]."""
    opened = asyncio.Event()
    count = [0]
    limits = httpx.Limits(max_connections=watchers + 10, max_keepalive_connections=0)

    async def watch(job_id: str) -> list[Any]:
        async with client.stream("GET", f"/jobs/{job_id}/events") as response:
            if response.status_code != 200:
                raise RuntimeError(f"stream refused: {response.status_code}")
            async for line in response.aiter_lines():
                if line == "event: status":
                    count[0] += 1
                    if count[0] == watchers:
                        opened.set()
                elif line == "event: job.cancelled":
                    return [job_id, time.time()]
        raise RuntimeError("stream ended without job.cancelled")

    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        started = time.perf_counter()
        tasks = [asyncio.create_task(watch(job_ids[i % len(job_ids)]))
                 for i in range(watchers)]
        await asyncio.wait_for(opened.wait(), 300)
        print(f"open {time.perf_counter() - started:.2f}", flush=True)
        print(json.dumps(await asyncio.gather(*tasks)), flush=True)


async def measure(url: str, pid: int, watchers: int, jobs: int) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        await latencies(client)  # warm up
        submits, readyz = await latencies(client)
        print(f"no watchers      submit {percentiles(submits)}   readyz {percentiles(readyz)}"
              f"   RSS {rss_mib(pid):6.1f} MiB")

        job_ids = []
        for _ in range(jobs):
            r = await client.post("/jobs", json={"jobType": "echo", "payload": {"text": "w"},
                                                 "delaySeconds": 3600})
            job_ids.append(r.json()["jobId"])
        holder = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.benchmarks.watchers", "--hold", url,
            "--watchers", str(watchers), *job_ids, stdout=asyncio.subprocess.PIPE)
        assert holder.stdout
        opened = (await holder.stdout.readline()).decode().split()
        print(f"{watchers} streams open in {float(opened[1]):.2f} s")
        state = (await client.get("/readyz")).json()["watchers"]
        assert state["active"] == watchers, state

        submits, readyz = await latencies(client)
        print(f"{watchers} watchers  submit {percentiles(submits)}   readyz "
              f"{percentiles(readyz)}   RSS {rss_mib(pid):6.1f} MiB")

        answered: dict[str, float] = {}

        async def cancel(job_id: str) -> None:
            await timed(client, "POST", f"/jobs/{job_id}/cancel", 200)
            answered[job_id] = time.time()

        await asyncio.gather(*(cancel(j) for j in job_ids))
        arrivals = json.loads(await holder.stdout.readline())
        await holder.wait()
        lag = [arrived - answered[job_id] for job_id, arrived in arrivals]
        print(f"job.cancelled on all {watchers} streams, after its cancel was answered: "
              f"p50 {statistics.median(lag) * 1000:.0f} ms, last {max(lag) * 1000:.0f} ms")
        submits, readyz = await latencies(client)  # the same again: how noisy is the host?
        print(f"closed again     submit {percentiles(submits)}   readyz {percentiles(readyz)}"
              f"   RSS {rss_mib(pid):6.1f} MiB")


def raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, wanted)), hard))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--redis-url")
    parser.add_argument("--mongodb-url")
    parser.add_argument("--hold", metavar="API_URL", help=argparse.SUPPRESS)
    parser.add_argument("job_ids", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    raise_fd_limit(args.watchers * 2 + 256)
    if args.hold:
        asyncio.run(hold(args.hold, args.job_ids, args.watchers))
        return
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        with stores_for(args, base):
            settings = isolated_settings(args.redis_url, args.mongodb_url, base / "logs",
                                         sse_max_clients=args.watchers)
            api = spawn("api", settings, base / "out")
            assert api.url
            try:
                asyncio.run(measure(api.url, api.process.pid, args.watchers, args.jobs))
            finally:
                api.stop()


if __name__ == "__main__":
    main()
