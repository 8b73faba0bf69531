"""A job's timeout or cancel really stops its work: process-isolated handlers and the
built-in CPU-heavy work run in pool children, which are killed (their pids are gone)."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any

import httpx

from services.runtime import Stores
from services.scheduler.scheduler import Scheduler
from shared.procpool import ProcessPool
from tests.support import gone, lines, submit, wait_finished, wait_until


async def warm_pool_of(background: Any) -> ProcessPool:
    """The worker's own process pool, once it runs, with a child started and idle (so a
    job's timeout is spent on its work, not on starting a process)."""

    async def running() -> bool:
        return hasattr(background.worker, "processes")

    await wait_until(running, 30, "the worker's process pool")
    pool: ProcessPool = background.worker.processes
    await pool.run(os.getpid)
    return pool


async def pids_in(path: Path, count: int) -> list[int]:
    async def written() -> bool:
        return len(lines(path)) >= count
    await wait_until(written, 60, f"{count} pid(s) in {path.name}", interval=0.05)
    return [int(line.split()[0]) for line in lines(path)]


def threads_in(function: str) -> list[str]:
    """Names of this process's threads that are running ``function`` now."""
    names = {t.ident: t.name for t in threading.enumerate()}
    found = []
    for ident, frame in sys._current_frames().items():
        f: Any = frame
        while f is not None:
            if f.f_code.co_name == function:
                found.append(names.get(ident, str(ident)))
                break
            f = f.f_back
    return found


async def test_a_runaway_process_handler_is_killed_at_its_timeout(
        api: httpx.AsyncClient, stores: Stores, background: Any, scheduler: Scheduler,
        tmp_path: Path) -> None:
    background(concurrency=1)
    path = tmp_path / "pids"
    # NOTE: long enough for a child to start even on a busy machine (the timeout covers
    # starting the child process too).
    job = await submit(api, "spin", {"path": str(path)}, timeoutSeconds=3, maxRetries=1)
    after = await submit(api, "echo", {"text": "the slot is free again"})
    docs = await wait_finished(stores.jobs, [job, after], 90)
    assert docs[job]["status"] == "FAILED" and docs[job]["retries"] == 1
    assert docs[job]["error"]["type"] == "JobTimeout"
    assert [h["error"]["type"] for h in docs[job]["history"] if h.get("error")] == [
        "JobTimeout", "JobTimeout"]
    pids = [int(p) for p in lines(path)]
    assert pids and all(gone(p) for p in pids)  # no run burns a core on
    assert docs[after]["status"] == "COMPLETED"


async def test_a_cancel_kills_the_running_child(
        api: httpx.AsyncClient, stores: Stores, background: Any, tmp_path: Path) -> None:
    background()
    path = tmp_path / "pids"
    job = await submit(api, "spin", {"path": str(path)}, timeoutSeconds=600)
    [pid] = await pids_in(path, 1)
    assert not gone(pid)
    r = await api.post(f"/jobs/{job}/cancel")
    assert r.status_code == 202
    doc = (await wait_finished(stores.jobs, [job], 30))[job]
    assert doc["status"] == "CANCELLED"
    assert gone(pid)


async def test_a_child_that_dies_is_an_ordinary_failure_and_the_pool_recovers(
        api: httpx.AsyncClient, stores: Stores, background: Any, scheduler: Scheduler,
        tmp_path: Path) -> None:
    background()
    path = tmp_path / "runs"
    job = await submit(api, "exits_once", {"path": str(path)}, maxRetries=1)
    permanent = await submit(api, "permanent_in_process", {"path": str(tmp_path / "p")},
                             maxRetries=3)
    docs = await wait_finished(stores.jobs, [job, permanent], 60)
    doc = docs[job]
    assert doc["status"] == "COMPLETED" and doc["retries"] == 1
    assert doc["result"] == {"attempt": 2, "jobId": job}
    [died] = [h["error"] for h in doc["history"] if h.get("error")]
    assert died["type"] == "ProcessDied" and "exit code 1" in died["message"]
    first_pid = int(lines(path)[0].split()[0])
    assert gone(first_pid)

    # what a process handler raises comes back as itself: a PermanentError is not retried
    assert docs[permanent]["status"] == "FAILED" and docs[permanent]["retries"] == 0
    assert docs[permanent]["error"]["type"] == "PermanentError"
    assert "permanent_in_process" in docs[permanent]["error"]["traceback"]


async def test_a_slow_pdf_report_stops_at_its_timeout(
        api: httpx.AsyncClient, stores: Stores, background: Any) -> None:
    worker = background()
    pool = await warm_pool_of(worker)
    rows = [[f"r{i}c{j}xxxx" for j in range(10)] for i in range(5000)]  # seconds of layout
    job = await submit(api, "generateReport",
                       {"format": "pdf", "title": "big", "columns": list("abcdefghij"),
                        "rows": rows}, timeoutSeconds=3, maxRetries=0)
    ran_in: set[int] = set()

    async def failed() -> bool:
        ran_in.update(pool.busy)
        found = await stores.jobs.find_one({"_id": job}, {"status": 1})
        return found is not None and found["status"] == "FAILED"

    await wait_until(failed, 90, "the report to time out", interval=0.02)
    doc = await stores.jobs.find_one({"_id": job})
    assert doc is not None and doc["error"]["type"] == "JobTimeout"
    assert threads_in("write_pdf") == []  # not laid out on in a thread of the worker
    assert ran_in and all(gone(p) for p in ran_in)  # nor in a child
    assert pool.busy == []


async def test_plain_def_handlers_run_in_their_own_threads(
        api: httpx.AsyncClient, stores: Stores, make_worker: Any, tmp_path: Path) -> None:
    """Not in the loop's default executor, which DNS look-ups (loop.getaddrinfo) use."""
    path = tmp_path / "threads"
    job = await submit(api, "where", {"path": str(path)})
    await make_worker().run(burst=True)
    doc = (await wait_finished(stores.jobs, [job], 10))[job]
    assert doc["status"] == "COMPLETED"
    assert lines(path)[0].startswith("job-handler")
