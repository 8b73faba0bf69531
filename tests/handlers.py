"""Job types the tests run (besides the built-in ones). Each records its runs in a file
named in its payload, so tests count executions outside the system."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path

from pydantic import BaseModel

from shared.jobtypes import JobContext, PermanentError, ProcessContext, Retry, job_type


class Recorded(BaseModel):
    path: str
    seconds: float = 0.0
    failures: int = 0
    delay: float | None = None


def record(path: str, line: str) -> int:
    """Append one line atomically; return how many lines the file now has."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
    return len(Path(path).read_text().splitlines())


@job_type("count", payload=Recorded)
async def count(payload: Recorded, ctx: JobContext) -> dict[str, object]:
    if payload.seconds:
        await asyncio.sleep(payload.seconds)
    record(payload.path, ctx.job_id)
    return {"ok": True}


@job_type("sleep", payload=Recorded)
async def sleep(payload: Recorded, ctx: JobContext) -> dict[str, object]:
    record(payload.path, f"start {ctx.job_id} {ctx.attempt}")
    await asyncio.sleep(payload.seconds)
    record(payload.path, f"end {ctx.job_id} {ctx.attempt}")
    return {"slept": payload.seconds}


@job_type("blocking", payload=Recorded)
def blocking(payload: Recorded, ctx: JobContext) -> dict[str, object]:
    time.sleep(payload.seconds)  # a plain def: runs in a thread
    record(payload.path, ctx.job_id)
    return {"blocked": payload.seconds}


@job_type("flaky", payload=Recorded)
async def flaky(payload: Recorded, ctx: JobContext) -> dict[str, object]:
    runs = record(payload.path, f"{ctx.job_id} {ctx.attempt}")
    if runs <= payload.failures:
        raise RuntimeError(f"failure {runs} of {payload.failures}")
    return {"runs": runs}


@job_type("always_fails", payload=Recorded)
async def always_fails(payload: Recorded, ctx: JobContext) -> None:
    record(payload.path, ctx.job_id)
    raise ValueError("this job always fails")


@job_type("permanent", payload=Recorded)
async def permanent(payload: Recorded, ctx: JobContext) -> None:
    record(payload.path, ctx.job_id)
    raise PermanentError("cannot ever work")


@job_type("retry_after", payload=Recorded)
async def retry_after(payload: Recorded, ctx: JobContext) -> dict[str, object]:
    runs = record(payload.path, f"{time.time()}")
    if runs <= payload.failures:
        raise Retry("come back later", delay=payload.delay)
    return {"runs": runs}


@job_type("crash", payload=Recorded)
async def crash(payload: Recorded, ctx: JobContext) -> None:
    record(payload.path, ctx.job_id)
    os.kill(os.getpid(), signal.SIGKILL)  # a poison pill: takes its worker down


@job_type("slow", payload=Recorded, timeout_seconds=0.3, max_retries=1)
async def slow(payload: Recorded, ctx: JobContext) -> None:
    record(payload.path, ctx.job_id)
    await asyncio.sleep(payload.seconds)


class Sized(BaseModel):
    bytes: int


@job_type("big_result", payload=Sized)
async def big_result(payload: Sized, ctx: JobContext) -> dict[str, object]:
    return {"blob": "x" * payload.bytes}


@job_type("raises_timeout", payload=Recorded)
async def raises_timeout(payload: Recorded, ctx: JobContext) -> None:
    record(payload.path, ctx.job_id)
    raise TimeoutError("the SMTP server did not answer in time")  # not the job's deadline


@job_type("sleep_first", payload=Recorded)
async def sleep_first(payload: Recorded, ctx: JobContext) -> dict[str, object]:
    """Sleeps on its first attempt only (to be cancelled or interrupted), then finishes."""
    record(payload.path, f"start {ctx.job_id} {ctx.attempt}")
    if ctx.attempt == 1:
        await asyncio.sleep(payload.seconds)
    return {"attempt": ctx.attempt}


@job_type("where", payload=Recorded)
def where(payload: Recorded, ctx: JobContext) -> dict[str, object]:
    """A plain def: records the name of the thread it runs in."""
    record(payload.path, threading.current_thread().name)
    return {"thread": threading.current_thread().name}


@job_type("spin", payload=Recorded, isolation="process")
def spin(payload: Recorded, ctx: ProcessContext) -> None:
    """CPU-bound for ever, in a pool child; records the child's pid first."""
    record(payload.path, str(os.getpid()))
    while True:
        pass


@job_type("exits_once", payload=Recorded, isolation="process")
def exits_once(payload: Recorded, ctx: ProcessContext) -> dict[str, object]:
    """Its child dies with os._exit on the first attempt; a later one returns."""
    record(payload.path, f"{os.getpid()} {ctx.attempt}")
    if ctx.attempt == 1:
        os._exit(1)
    return {"attempt": ctx.attempt, "jobId": ctx.job_id}


@job_type("permanent_in_process", payload=Recorded, isolation="process")
def permanent_in_process(payload: Recorded, ctx: ProcessContext) -> None:
    record(payload.path, str(os.getpid()))
    raise PermanentError("cannot ever work, even in a child")


@job_type("capped", payload=Recorded, concurrency=2)
async def capped(payload: Recorded, ctx: JobContext) -> dict[str, object]:
    """At most two run at once on all workers. Records its start and end times; sleeps
    ``seconds`` on the first attempt, ``delay`` (or nothing) on later ones."""
    record(payload.path, f"start {ctx.job_id} {time.time()} {ctx.worker_id}")
    await asyncio.sleep(payload.seconds if ctx.attempt == 1 else payload.delay or 0.0)
    record(payload.path, f"end {ctx.job_id} {time.time()} {ctx.worker_id}")
    return {"attempt": ctx.attempt}


@job_type("metered", payload=Recorded, rate="5/s")
async def metered(payload: Recorded, ctx: JobContext) -> dict[str, object]:
    """At most five start per second on all workers (a burst of five). Records when."""
    record(payload.path, f"{time.time()}")
    return {"ok": True}
