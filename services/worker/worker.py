"""The worker: claim → run under a timeout → record the outcome, for N jobs at once.

Entries are read from the streams in batches (as many as there are free slots), moved
to PROCESSING with one bulk conditional update, run as asyncio tasks, and recorded by
the batched :class:`OutcomeRecorder`. An entry stays pending in the consumer group until
its outcome is stored, and a heartbeat keeps it from being reclaimed while it runs.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import time
import traceback
from collections import deque
from dataclasses import dataclass, field

import httpx
from pydantic import ValidationError
from pydantic_core import to_jsonable_python
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError
from redis.exceptions import RedisError

from services.worker.outcomes import Outcome, OutcomeRecorder, plan
from shared import transitions
from shared.artifacts import ArtifactStore, JobArtifacts
from shared.clock import RedisClock
from shared.errors import JobTimeout, PermanentError, Retry
from shared.jobtypes import JobContext, JobType
from shared.logs import bound, get_log
from shared.models import ErrorInfo
from shared.queue import Delivery, RedisQueue, Settle
from shared.settings import Settings
from shared.status import PRIORITIES_IN_READ_ORDER, JobStatus

log = get_log(__name__)
TRACEBACK_TAIL_CHARS = 4000


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{random.randrange(16**4):04x}"


def error_info(exc: BaseException) -> ErrorInfo:
    tb = "".join(traceback.format_exception(exc))
    return ErrorInfo(type=type(exc).__name__, message=str(exc) or type(exc).__name__,
                     traceback=tb[-TRACEBACK_TAIL_CHARS:])


def _rank(delivery: Delivery) -> int:
    return PRIORITIES_IN_READ_ORDER.index(delivery.priority)


@dataclass
class Running:
    delivery: Delivery
    doc: transitions.Doc
    task: asyncio.Task[None] | None = None
    cancel_requested: bool = False


@dataclass
class Worker:
    settings: Settings
    jobs: AsyncCollection[transitions.Doc]
    queue: RedisQueue
    clock: RedisClock
    registry: dict[str, JobType]
    artifacts: ArtifactStore
    worker_id: str = field(default_factory=new_worker_id)

    def __post_init__(self) -> None:
        self.concurrency = self.settings.concurrency
        self.running: dict[str, Running] = {}
        self.backlog: deque[Delivery] = deque()
        self.stopping = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self.recorder = OutcomeRecorder(self.jobs, self.queue)

    # -- lifecycle --------------------------------------------------------------------

    def stop(self) -> None:
        """Stop claiming; in-flight runs get the shutdown grace period to finish."""
        self.stopping.set()
        self._slot_freed.set()

    async def run(self, *, burst: bool = False) -> None:
        """Work until :meth:`stop`, or (burst) until the streams are empty."""
        await self.queue.ensure_groups()
        await self.clock.sync(self.queue.redis)
        self.recorder.start()
        self.http = httpx.AsyncClient(timeout=self.settings.http_timeout_seconds,
                                      trust_env=False)
        helpers = [asyncio.create_task(self._heartbeat(), name="heartbeat"),
                   asyncio.create_task(self._listen_for_cancels(), name="cancels")]
        log.info("worker.started", workerId=self.worker_id, concurrency=self.concurrency,
                 jobTypes=sorted(self.registry))
        try:
            await self._claim_loop(burst)
        finally:
            await self._drain()
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            await self.recorder.stop()
            await self.http.aclose()
            log.info("worker.stopped", workerId=self.worker_id)

    async def _drain(self) -> None:
        tasks = [r.task for r in self.running.values() if r.task]
        if not tasks:
            return
        log.info("worker.draining", inFlight=len(tasks),
                 graceSeconds=self.settings.shutdown_grace_seconds)
        _, late = await asyncio.wait(tasks, timeout=self.settings.shutdown_grace_seconds)
        for task in late:
            task.cancel()  # NOTE: no outcome is written; the entry is reclaimed and rerun
        await asyncio.gather(*late, return_exceptions=True)

    # -- claiming ---------------------------------------------------------------------

    async def _claim_loop(self, burst: bool) -> None:
        pause = 0.05
        while not self.stopping.is_set():
            free = self.concurrency - len(self.running)
            try:
                if 0 < free and len(self.backlog) < free:
                    block = None if burst or self.running else 1000
                    fresh = await self.queue.read(self.worker_id, free - len(self.backlog),
                                                  block)
                    self.backlog = deque(sorted([*self.backlog, *fresh], key=_rank))
                batch = self._take(free)
                if batch:
                    await self._start(batch)
                elif self.running:
                    self._slot_freed.clear()
                    await self._slot_freed.wait()
                elif burst and not self.backlog:
                    return
                pause = 0.05
            except (PyMongoError, RedisError, OSError) as exc:
                # Keep what was read: it is ours until reclaimed, and heartbeats cover it.
                log.warning("worker.store_unavailable", error=str(exc), retryInSeconds=pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)

    def _take(self, free: int) -> list[Delivery]:
        """The next entries to start, at most ``free``.

        An entry delivered before (its worker died mid-run) is a suspect: it may be the
        job that kills workers. It runs alone, once nothing else runs, so a poison pill
        dies alone and the jobs that shared its first worker complete.
        """
        if free <= 0 or any(r.delivery.deliveries > 1 for r in self.running.values()):
            return []
        suspect = next((d for d in self.backlog if d.deliveries > 1), None)
        if suspect is not None:
            if self.running:
                return []
            self.backlog.remove(suspect)
            return [suspect]
        return [self.backlog.popleft() for _ in range(min(free, len(self.backlog)))]

    async def _start(self, batch: list[Delivery]) -> None:
        try:
            docs = {d["_id"]: d async for d in
                    self.jobs.find({"_id": {"$in": [d.job_id for d in batch]}})}
        except BaseException:
            self.backlog.extendleft(reversed(batch))
            raise
        now = self.clock.now()
        planned: list[tuple[Delivery, transitions.Transition, transitions.Doc]] = []
        skipped: list[Settle] = []
        for d in batch:
            doc = docs.get(d.job_id)
            status = doc and JobStatus(doc["status"])
            fresh = status is JobStatus.QUEUED and d.job_id not in self.running
            takeover = (status is JobStatus.PROCESSING and d.prev is not None
                        and doc is not None and doc["claim"] == d.prev)
            if doc and (fresh or takeover):
                t = transitions.claim(doc, entry_id=d.entry_id, worker_id=self.worker_id,
                                      now=now)
            else:
                # Cancelled, finished, or owned by another entry: nothing to run.
                skipped.append(Settle(d, release=status is not JobStatus.PROCESSING))
                continue
            planned.append((d, t, doc))
        try:
            applied = await transitions.apply(self.jobs, [t for _, t, _ in planned])
        except BaseException:
            self.backlog.extendleft(reversed(batch))
            raise
        applied_ids = {t.event.id for t in applied}
        for d, t, doc in planned:
            if t.event.id in applied_ids:
                self._launch(d, transitions.advanced(doc, t))
            else:
                skipped.append(Settle(d, release=False))
        await self.queue.settle(skipped, [t.event.to_json() for t in applied])

    def _launch(self, delivery: Delivery, doc: transitions.Doc) -> None:
        run = Running(delivery, doc)
        self.running[doc["_id"]] = run
        run.task = asyncio.create_task(self._execute(run), name=f"job:{doc['_id']}")

    # -- running ----------------------------------------------------------------------

    async def _execute(self, run: Running) -> None:
        doc = run.doc
        job_type = self.registry.get(doc["job_type"])
        try:
            with bound(jobId=doc["_id"], jobType=doc["job_type"], attempt=doc["attempt"],
                       workerId=self.worker_id):
                log.info("job.started", retries=doc["retries"])
                started = time.monotonic()
                outcome = await self._outcome(run, job_type)
                duration_ms = round((time.monotonic() - started) * 1000, 2)
                transition = plan(doc, outcome, job_type, self.settings, self.clock,
                                  self.worker_id)
                log.info("job.finished", status=transition.event.status.value,
                         outcome=outcome.status.value, durationMs=duration_ms,
                         **({"error": outcome.error.message} if outcome.error else {}))
                # NOTE: shielded so a shutdown that cancels this task cannot lose an
                # outcome that was already decided.
                await asyncio.shield(self.recorder.record(run.delivery, transition))
        finally:
            self.running.pop(doc["_id"], None)
            self._slot_freed.set()

    async def _outcome(self, run: Running, job_type: JobType | None) -> Outcome:
        doc = run.doc
        if job_type is None:
            return Outcome(JobStatus.FAILED, error=ErrorInfo(
                type="UnknownJobType",
                message=f"no handler for job type {doc['job_type']!r} on this worker"))
        timeout = doc.get("timeout_seconds") or self.settings.default_timeout_seconds
        ctx = JobContext(job_id=doc["_id"], job_type=doc["job_type"], attempt=doc["attempt"],
                         retries=doc["retries"], max_retries=doc["max_retries"],
                         worker_id=self.worker_id, log=get_log(f"jobs.{doc['job_type']}"),
                         settings=self.settings, http=self.http,
                         artifacts=JobArtifacts(self.artifacts, doc["_id"]))
        try:
            payload = job_type.payload.model_validate(doc["payload"],
                                                      context={"settings": self.settings})
            async with asyncio.timeout(timeout) as deadline:
                result = await job_type.run(payload, ctx)
            return Outcome(JobStatus.COMPLETED, result=to_jsonable_python(result),
                           artifacts=tuple(ctx.artifacts.saved))
        except asyncio.CancelledError:
            if run.cancel_requested:
                current = asyncio.current_task()
                if current is not None:
                    current.uncancel()  # the cancel was the job's, not this worker's
                return Outcome(JobStatus.CANCELLED)
            raise
        except TimeoutError:
            if deadline.expired():
                exc = JobTimeout(f"timed out after {timeout:g}s")
            return Outcome(JobStatus.FAILED, error=error_info(exc), retryable=True)
        except Retry as exc:
            return Outcome(JobStatus.FAILED, error=error_info(exc), retryable=True,
                           retry_delay=exc.delay)
        except (PermanentError, ValidationError) as exc:
            return Outcome(JobStatus.FAILED, error=error_info(exc))
        except Exception as exc:
            return Outcome(JobStatus.FAILED, error=error_info(exc), retryable=True)

    # -- helpers ----------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        interval = self.settings.visibility_timeout_seconds / 3
        while True:
            await asyncio.sleep(interval)
            owned = [r.delivery for r in self.running.values()] + list(self.backlog)
            try:
                await self.queue.touch(self.worker_id, owned)
                await self.clock.sync(self.queue.redis)
            except (RedisError, OSError) as exc:
                log.warning("worker.heartbeat_failed", error=str(exc))

    async def _listen_for_cancels(self) -> None:
        """Cancel a running handler when the API asks (POST /jobs/{id}/cancel)."""
        while True:
            pubsub = self.queue.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.queue.keys.cancel_channel)
                async for message in pubsub.listen():
                    run = self.running.get(message["data"])
                    if run and run.task and not run.cancel_requested:
                        run.cancel_requested = True
                        run.task.cancel()
            except (RedisError, OSError) as exc:
                log.warning("worker.cancel_listener_lost", error=str(exc))
                await asyncio.sleep(1)
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call]
