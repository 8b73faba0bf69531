"""The worker: claim → run under a timeout → record the outcome, for N jobs at once.

Entries are read from the streams in batches (as many as there are free slots), moved
to PROCESSING with one bulk conditional update, run as asyncio tasks, and recorded by
the batched :class:`OutcomeRecorder`. An entry stays pending in the consumer group until
its outcome is stored, and a heartbeat keeps it from being reclaimed while it runs.
Jobs of a type over its cluster-wide limits (:mod:`shared.typelimits`) are not claimed:
their entries are handed back to wait in the delayed set.

The recorder, the heartbeat and the cancel listener run in one ``asyncio.TaskGroup``
with the claim loop: if any of them dies, the worker stops and ``run`` raises, so the
process exits non-zero instead of living on wedged.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import bson
from pydantic import ValidationError
from pydantic_core import to_jsonable_python
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError
from redis.exceptions import RedisError

from services.worker.claiming import Verdict, judge
from services.worker.outcomes import Outcome, OutcomeRecorder, plan, until_stored
from shared import transitions
from shared.artifacts import ArtifactStore, JobArtifacts
from shared.clock import RedisClock, to_ms
from shared.errors import JobTimeout, PermanentError, ResultTooLarge, Retry
from shared.jobtypes import JobContext, JobType
from shared.logs import bound, get_log
from shared.models import ErrorInfo
from shared.outbound import outbound_client
from shared.procpool import ProcessPool
from shared.queue import Delivery, Enqueue, RedisQueue, Settle, scheduled_member
from shared.settings import Settings
from shared.status import PRIORITIES_IN_READ_ORDER, JobStatus
from shared.supervise import cancel_and_wait
from shared.tracebacks import format_traceback
from shared.typelimits import (
    RESERVE_SECONDS,
    Candidate,
    TypeLimiter,
    effective_limits,
    unknown_types,
)

log = get_log(__name__)
READ_BLOCK_MS = 1000
SUSPECT_AFTER_DELIVERIES = 2
"""An entry delivered more often than this (its job's runs died with their workers) is a
suspect: it runs alone, so a poison pill cannot take neighbours down with it again."""
HAND_BACK_SECONDS = 5.0
STARTS = (Verdict.CLAIM, Verdict.TAKEOVER, Verdict.OURS)
"""Verdicts that start a run (and so must fit their job type's limits)."""


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{random.randrange(16**4):04x}"


def error_info(exc: BaseException) -> ErrorInfo:
    """The failure as recorded; shared.transitions cuts it to its stored size."""
    # NOTE: served to clients: no server paths
    return ErrorInfo(type=type(exc).__name__, message=str(exc) or type(exc).__name__,
                     traceback=format_traceback(exc))


def _rank(delivery: Delivery) -> int:
    return PRIORITIES_IN_READ_ORDER.index(delivery.priority)


def suspect(delivery: Delivery) -> bool:
    return delivery.deliveries > SUSPECT_AFTER_DELIVERIES


def checked_result(result: Any, max_bytes: int) -> Any:
    """The handler's result as stored, or ResultTooLarge when it is over ``max_bytes`` or
    cannot be stored in MongoDB at all (an integer over 64 bits, say)."""
    stored = to_jsonable_python(result)
    try:
        size = len(bson.encode({"result": stored}))
    except (bson.errors.InvalidDocument, OverflowError) as exc:
        raise ResultTooLarge(f"the result cannot be stored: {exc}") from None
    if size > max_bytes:
        raise ResultTooLarge(
            f"the result is {size} bytes, over the {max_bytes}-byte limit "
            "(JOBQUEUE_MAX_RESULT_BYTES); save large output with ctx.artifacts.save")
    return stored


@dataclass
class Running:
    delivery: Delivery
    doc: transitions.Doc
    task: asyncio.Task[None] | None = None
    cancel_requested: bool = False
    in_handler: bool = False
    """The handler has started: a cancel must interrupt it (before, the flag suffices)."""
    interrupted: bool = False
    """Cancelled by a graceful stop at the end of its grace period."""


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
        self.parked: list[tuple[float, Delivery]] = []
        """Takeovers held back by their job type's limits, kept (and heartbeated) until
        their time (monotonic): the job is PROCESSING (the run it replaces died), so it
        cannot wait in the delayed set, which promotes QUEUED jobs only."""
        self.stopping = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self.recorder = OutcomeRecorder(self.jobs, self.queue)
        # NOTE: a slot's lease is the visibility timeout: a dead worker's runs free their
        # slots about when their entries are reclaimed, never before.
        self.limits = TypeLimiter(
            self.queue.redis, self.queue.keys.prefix,
            effective_limits(self.registry, self.settings.type_limits),
            self.settings.visibility_timeout_seconds, self.queue.wake,
            max(RESERVE_SECONDS, 3 * self.settings.promote_interval_seconds))

    # -- lifecycle --------------------------------------------------------------------

    def stop(self) -> None:
        """Stop claiming; in-flight runs get the shutdown grace period to finish."""
        self.stopping.set()
        self._slot_freed.set()

    async def run(self, *, burst: bool = False) -> None:
        """Work until :meth:`stop`, or (burst) until the streams are empty.

        Raises (an ExceptionGroup) if a helper task dies: the caller must not go on.
        """
        await self.queue.ensure_groups()
        await self.clock.sync(self.queue.redis)
        # NOTE: the guarded client checks every address it connects to, pools by host
        # name (so TLS checks the real name) and keeps no cookies across jobs.
        self.http = outbound_client(self.settings.scrape_allowed_hosts,
                                    timeout=self.settings.http_timeout_seconds)
        self.processes = ProcessPool(self.settings.process_pool_size)
        log.info("worker.started", workerId=self.worker_id, concurrency=self.concurrency,
                 jobTypes=sorted(self.registry),
                 typeLimits={name: str(limit) for name, limit in self.limits.limits.items()})
        unknown = unknown_types(self.registry, self.settings.type_limits)
        if unknown:
            log.warning("worker.type_limits_unknown_types", jobTypes=unknown,
                        hint="JOBQUEUE_TYPE_LIMITS names job types this worker does not run")
        try:
            async with asyncio.TaskGroup() as group:
                helpers = [group.create_task(self.recorder.run(), name="outcome-recorder"),
                           group.create_task(self._heartbeat(), name="heartbeat"),
                           group.create_task(self._listen_for_cancels(), name="cancels")]
                await self._claim_loop(burst)
                await self._drain()
                await self.recorder.flushed()
                await cancel_and_wait(helpers)
        except BaseExceptionGroup as exc:
            log.critical("worker.helper_died", workerId=self.worker_id,
                         error=repr(exc.exceptions[0]))
            raise
        finally:
            await self.http.aclose()
            await self.processes.close()
        log.info("worker.stopped", workerId=self.worker_id)

    async def _drain(self) -> None:
        runs = [r for r in self.running.values() if r.task]
        if not runs:
            return
        log.info("worker.draining", inFlight=len(runs),
                 graceSeconds=self.settings.shutdown_grace_seconds)
        _, late = await asyncio.wait([r.task for r in runs if r.task],
                                     timeout=self.settings.shutdown_grace_seconds)
        for run in runs:
            if run.task in late:
                run.interrupted = True  # handed back by _execute, not counted as a death
                run.task.cancel()
        await asyncio.gather(*late, return_exceptions=True)

    # -- claiming ---------------------------------------------------------------------

    async def _claim_loop(self, burst: bool) -> None:
        pause = 0.05
        while not self.stopping.is_set():
            try:
                drained = await self._claim_step(burst)
                if (burst and drained and not self.running and not self.backlog
                        and not self.parked):
                    return
                pause = 0.05
            except (PyMongoError, RedisError, OSError) as exc:
                # Keep what was read: it is ours until reclaimed, and heartbeats cover it.
                log.warning("worker.store_unavailable", error=str(exc), retryInSeconds=pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)

    async def _claim_step(self, burst: bool) -> bool:
        """Fill free slots; True when the streams had nothing more to give.

        With free slots and nothing in hand, wait for whichever comes first, a new entry
        (a blocking read) or a freed slot, never for a slot alone: a long job must not
        idle the others."""
        self._unpark()
        free = self.concurrency - len(self.running)
        drained = False
        if free > len(self.backlog):
            block = None if burst or self.backlog else READ_BLOCK_MS
            fresh = await self.queue.read(self.worker_id, free - len(self.backlog), block)
            drained = not fresh
            self.backlog = deque(sorted([*self.backlog, *fresh], key=_rank))
        free = self.concurrency - len(self.running)
        batch = self._take(free)
        if batch:
            await self._start(batch)
            return False
        # Full, or holding entries that must wait (a suspect runs alone), or a burst
        # with nothing left to read: only a finished run can change anything.
        if self.running and (free <= 0 or self.backlog or burst):
            self._slot_freed.clear()
            await self._slot_freed.wait()
        elif burst and self.parked and not self.backlog:
            await asyncio.sleep(max(0.0, min(at for at, _ in self.parked) - time.monotonic()))
        return drained

    def _unpark(self) -> None:
        now = time.monotonic()
        due = [d for at, d in self.parked if at <= now]
        if due:
            self.parked = [(at, d) for at, d in self.parked if at > now]
            self.backlog = deque(sorted([*self.backlog, *due], key=_rank))

    def _take(self, free: int) -> list[Delivery]:
        """The next entries to start, at most ``free``.

        A suspect (its runs died with their workers more than once) may be the job that
        kills workers. It runs alone, once nothing else runs, so a poison pill dies alone
        and the jobs that shared its worker complete.
        """
        if free <= 0 or any(suspect(r.delivery) for r in self.running.values()):
            return []
        first = next((d for d in self.backlog if suspect(d)), None)
        if first is not None:
            if self.running:
                return []
            self.backlog.remove(first)
            return [first]
        return [self.backlog.popleft() for _ in range(min(free, len(self.backlog)))]

    async def _start(self, batch: list[Delivery]) -> None:
        try:
            docs = {d["_id"]: d async for d in
                    self.jobs.find({"_id": {"$in": [d.job_id for d in batch]}})}
        except BaseException:
            self.backlog.extendleft(reversed(batch))
            raise
        verdicts = [(d, docs.get(d.job_id), judge(docs.get(d.job_id), d,
                                                  d.job_id in self.running)) for d in batch]
        # Runs of limited types start only if the type's cluster-wide limits admit them;
        # the others are handed back to wait, unclaimed (see _hold_back), in a line fair
        # across tenants (a takeover waits here instead, see parked).
        starting = [Candidate(d.job_id, doc["job_type"], force=verdict is Verdict.OURS,
                              member=None if verdict is Verdict.TAKEOVER
                              else scheduled_member(d.job_id, d.priority, d.tenant),
                              tenant=d.tenant)
                    for d, doc, verdict in verdicts
                    if doc is not None and verdict in STARTS
                    and self.limits.limited(doc["job_type"])]
        try:
            admission = await self.limits.admit(starting)
        except BaseException:
            self.backlog.extendleft(reversed(batch))
            raise
        slots = [(c.job_type, c.job_id) for c in starting if c.job_id in admission.admitted]
        now = self.clock.now()
        planned: list[tuple[Delivery, transitions.Transition, transitions.Doc]] = []
        ours: list[tuple[Delivery, transitions.Doc]] = []
        skipped: list[Settle] = []
        held: list[tuple[Delivery, float]] = []
        for d, doc, verdict in verdicts:
            if d.job_id in admission.held and verdict in STARTS:
                if verdict is Verdict.TAKEOVER:
                    self.parked.append((time.monotonic() + admission.held[d.job_id], d))
                else:
                    held.append((d, admission.held[d.job_id]))
            elif verdict is Verdict.SKIP or doc is None:
                skipped.append(Settle(d))
            elif verdict is Verdict.OURS:
                ours.append((d, doc))
            elif verdict is Verdict.CANCEL:
                planned.append((d, transitions.cancel(doc, now, worker_id=self.worker_id),
                                doc))
            else:
                planned.append((d, transitions.claim(doc, entry_id=d.entry_id,
                                                     worker_id=self.worker_id, now=now,
                                                     solo=suspect(d)), doc))
        try:
            applied = await transitions.apply(self.jobs, [t for _, t, _ in planned])
        except BaseException:
            # NOTE: the claims may have applied with the reply lost: read again, the
            # verdict is then OURS for each that did (and takes its slot again).
            self.backlog.extendleft(reversed(batch))
            await self._release_quietly(slots)
            raise
        applied_ids = {t.event.id for t in applied}
        for d, doc in ours:
            log.info("job.claim_recovered", jobId=d.job_id, entry=d.entry_id)
            self._launch(d, doc)
        for d, t, doc in planned:
            if t.event.id in applied_ids and t.event.status is JobStatus.PROCESSING:
                self._launch(d, transitions.advanced(doc, t))
            else:
                skipped.append(Settle(d))  # cancelled here, or the job moved on
        await self._release_quietly([s for s in slots if s[1] not in self.running])
        await self._hold_back(held, admission.sleeping)
        await self.queue.settle(skipped, [t.event.to_json() for t in applied])

    async def _hold_back(self, held: list[tuple[Delivery, float]],
                         sleeping: list[Candidate]) -> None:
        """Hand back entries whose job type is over its limits: each job waits, QUEUED
        and unclaimed, in the delayed set until it may be tried again (no slot, retry or
        history entry used). Those held by a full cap then join their type's line, to be
        woken when a slot frees (their time in the delayed set is only a safety net). If
        Redis fails, the entries not yet handed back stay ours, in the backlog."""
        now_ms = to_ms(self.clock.now())
        deferred: set[str] = set()
        try:
            for i, (d, wait) in enumerate(held):
                try:
                    await self.queue.defer(d, now_ms + max(1, round(wait * 1000)))
                except BaseException:
                    self.backlog.extend(d for d, _ in held[i:])
                    raise
                deferred.add(d.job_id)
                log.debug("job.held_back", jobId=d.job_id, waitSeconds=round(wait, 3))
        finally:
            # NOTE: after the defer, so a wake always finds the member in the delayed
            # set; a slot freed in between is found free here and wakes the line.
            in_line = [c for c in sleeping if c.job_id in deferred]
            if in_line:
                try:
                    await self.limits.wait(in_line)
                except (RedisError, OSError) as exc:
                    log.warning("worker.type_line_join_failed",
                                jobIds=[c.job_id for c in in_line], error=str(exc))

    async def _release_quietly(self, slots: list[tuple[str, str]]) -> None:
        """Free concurrency slots; if Redis does not answer, their leases run out."""
        try:
            await self.limits.release(slots)
        except (RedisError, OSError) as exc:
            log.warning("worker.slot_release_failed", jobIds=[j for _, j in slots],
                        error=str(exc))

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
                try:
                    outcome = await self._outcome(run, job_type)
                except asyncio.CancelledError:
                    if not run.interrupted:
                        raise
                    await asyncio.shield(self._hand_back(run))
                    return
                duration_ms = round((time.monotonic() - started) * 1000, 2)
                transition = plan(doc, outcome, job_type, self.settings, self.clock,
                                  self.worker_id)
                log.info("job.finished", status=transition.event.status.value,
                         outcome=outcome.status.value, durationMs=duration_ms,
                         **({"error": outcome.error.message} if outcome.error else {}))
                # NOTE: shielded so a shutdown that cancels this task cannot lose an
                # outcome that was already decided.
                await asyncio.shield(self.recorder.record(run.delivery, doc, transition))
        finally:
            self.running.pop(doc["_id"], None)
            self._slot_freed.set()
            # NOTE: after the outcome is stored, so a type's runs in MongoDB never
            # outnumber its concurrency limit.
            await self._release_quietly([(doc["job_type"], doc["_id"])])

    async def _hand_back(self, run: Running) -> None:
        """A graceful stop interrupted this run: record that (it is not a death), queue
        the job again at once and release the entry. Bounded: if the stores do not
        answer in time the entry is left to be reclaimed."""
        t = transitions.interrupt(run.doc, self.clock.now(), worker_id=self.worker_id)
        try:
            async with asyncio.timeout(HAND_BACK_SECONDS):
                if await until_stored(lambda: transitions.apply(self.jobs, [t]), "mongodb"):
                    await self.queue.enqueue(
                        [Enqueue(t.job_id, run.delivery.priority,
                                 tenant=run.delivery.tenant)], [t.event.to_json()])
                await self.queue.settle([Settle(run.delivery)])
            log.warning("job.interrupted", jobId=t.job_id)
        except (TimeoutError, RedisError, OSError) as exc:
            log.warning("job.interrupt_not_recorded", jobId=t.job_id, error=str(exc))

    async def _outcome(self, run: Running, job_type: JobType | None) -> Outcome:
        doc = run.doc
        if job_type is None:
            return Outcome(JobStatus.FAILED, error=ErrorInfo(
                type="UnknownJobType",
                message=f"no handler for job type {doc['job_type']!r} on this worker"))
        if run.cancel_requested:
            return Outcome(JobStatus.CANCELLED)
        timeout = doc.get("timeout_seconds") or self.settings.default_timeout_seconds
        ctx = JobContext(job_id=doc["_id"], job_type=doc["job_type"], attempt=doc["attempt"],
                         retries=doc["retries"], max_retries=doc["max_retries"],
                         worker_id=self.worker_id, log=get_log(f"jobs.{doc['job_type']}"),
                         settings=self.settings, http=self.http, processes=self.processes,
                         artifacts=JobArtifacts(self.artifacts, doc["_id"]))
        deadline = None
        try:
            payload = job_type.payload.model_validate(doc["payload"],
                                                      context={"settings": self.settings})
            run.in_handler = True
            async with asyncio.timeout(timeout) as deadline:
                result = await job_type.run(payload, ctx)
            return Outcome(JobStatus.COMPLETED,
                           result=checked_result(result, self.settings.max_result_bytes),
                           artifacts=tuple(ctx.artifacts.saved))
        except asyncio.CancelledError:
            if run.cancel_requested and not run.interrupted:
                current = asyncio.current_task()
                if current is not None:
                    current.uncancel()  # the cancel was the job's, not this worker's
                return Outcome(JobStatus.CANCELLED)
            raise
        except TimeoutError as exc:
            # NOTE: only the job's own deadline is a JobTimeout; a TimeoutError the
            # handler raised (an SMTP or HTTP timeout) is an ordinary failure.
            own_deadline = deadline is not None and deadline.expired()
            failure = JobTimeout(f"timed out after {timeout:g}s") if own_deadline else exc
            return Outcome(JobStatus.FAILED, error=error_info(failure), retryable=True)
        except Retry as exc:
            return Outcome(JobStatus.FAILED, error=error_info(exc), retryable=True,
                           retry_delay=exc.delay)
        except (PermanentError, ValidationError) as exc:
            return Outcome(JobStatus.FAILED, error=error_info(exc))
        except Exception as exc:
            return Outcome(JobStatus.FAILED, error=error_info(exc), retryable=True)
        finally:
            run.in_handler = False

    def _cancel(self, run: Running) -> None:
        """Cancel a run here: before its handler starts the flag suffices."""
        if run.cancel_requested:
            return
        run.cancel_requested = True
        run.doc["cancel_requested"] = True
        if run.in_handler and run.task is not None:
            run.task.cancel()

    # -- helpers ----------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        """Keep this worker's entries from being reclaimed, keep the clock in step, and
        honour cancels whose pub/sub message was missed (the flag in MongoDB is the
        truth)."""
        interval = self.settings.visibility_timeout_seconds / 3
        while True:
            await asyncio.sleep(interval)
            owned = [r.delivery for r in self.running.values()] + list(self.backlog) + [
                d for _, d in self.parked]
            try:
                await self.queue.touch(self.worker_id, owned)
                await self.limits.refresh((r.doc["job_type"], job_id)
                                          for job_id, r in self.running.items())
                await self.clock.sync(self.queue.redis)
            except (RedisError, OSError) as exc:
                log.warning("worker.heartbeat_failed", error=str(exc))
            await self._check_cancels()

    async def _check_cancels(self) -> None:
        ids = list(self.running)
        if not ids:
            return
        try:
            flagged = [d["_id"] async for d in self.jobs.find(
                {"_id": {"$in": ids}, "cancel_requested": True}, {"_id": 1})]
        except (PyMongoError, OSError) as exc:
            log.warning("worker.cancel_check_failed", error=str(exc))
            return
        for job_id in flagged:
            run = self.running.get(job_id)
            if run is not None:
                self._cancel(run)

    async def _listen_for_cancels(self) -> None:
        """Cancel a running handler when the API asks (POST /jobs/{id}/cancel)."""
        while True:
            pubsub = self.queue.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.queue.keys.cancel_channel)
                async for message in pubsub.listen():
                    run = self.running.get(message["data"])
                    if run is not None:
                        self._cancel(run)
            except (RedisError, OSError) as exc:
                log.warning("worker.cancel_listener_lost", error=str(exc))
                await asyncio.sleep(1)
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call]
