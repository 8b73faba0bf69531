"""How a run ended, and the batched writer that records outcomes.

Outcomes of runs that end close together are written with one MongoDB ``bulk_write``
and settled in Redis with one pipeline, instead of two round trips per job. A run's
entry is acknowledged only after its outcome is stored: while MongoDB is unreachable the
recorder keeps retrying and acknowledges nothing.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError
from redis.exceptions import RedisError

from shared import transitions
from shared.backoff import next_delay
from shared.clock import RedisClock, to_ms
from shared.jobtypes import JobType
from shared.logs import get_log
from shared.models import Artifact, ErrorInfo
from shared.queue import Delivery, RedisQueue, Settle
from shared.settings import Settings
from shared.status import JobStatus

log = get_log(__name__)


@dataclass(frozen=True)
class Outcome:
    status: JobStatus
    """COMPLETED, CANCELLED, or FAILED (turned into SCHEDULED when retries remain)."""
    result: Any = None
    error: ErrorInfo | None = None
    retryable: bool = False
    retry_delay: float | None = None
    artifacts: tuple[Artifact, ...] = ()


def plan(doc: transitions.Doc, outcome: Outcome, job_type: JobType | None, settings: Settings,
         clock: RedisClock, worker_id: str) -> transitions.Transition:
    """The transition that records ``outcome`` for the run described by ``doc``."""
    now = clock.now()
    if outcome.status is JobStatus.COMPLETED:
        return transitions.complete(
            doc, outcome.result, now, worker_id=worker_id,
            extra={"artifacts": [a.model_dump() for a in outcome.artifacts]})
    if outcome.status is JobStatus.CANCELLED:
        return transitions.cancel(doc, now, worker_id=worker_id)
    assert outcome.error is not None
    if outcome.retryable and doc.get("cancel_requested"):
        return transitions.cancel(doc, now, worker_id=worker_id)
    if outcome.retryable and doc["retries"] < doc["max_retries"]:
        delay = outcome.retry_delay
        if delay is None:
            base = (job_type and job_type.retry_base_seconds) or settings.retry_base_seconds
            cap = (job_type and job_type.retry_max_seconds) or settings.retry_max_seconds
            delay = next_delay(doc["retries"] + 1, base, cap)
        return transitions.retry_later(doc, outcome.error, clock.after(max(delay, 0.0)), now,
                                       worker_id=worker_id)
    return transitions.fail(doc, outcome.error, now, worker_id=worker_id)


@dataclass
class _Pending:
    delivery: Delivery
    transition: transitions.Transition
    done: asyncio.Future[bool]


class OutcomeRecorder:
    def __init__(self, jobs: AsyncCollection[transitions.Doc], queue: RedisQueue,
                 *, tick_seconds: float = 0.004) -> None:
        self.jobs = jobs
        self.queue = queue
        self.tick_seconds = tick_seconds
        self._pending: list[_Pending] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outcome-recorder")

    async def stop(self) -> None:
        """Wait until every recorded outcome is flushed, then stop."""
        await self._idle.wait()
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def record(self, delivery: Delivery, transition: transitions.Transition) -> bool:
        """Store the outcome, then settle the entry; True if this run still owned the job."""
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(delivery, transition, done))
        self._idle.clear()
        self._wake.set()
        return await done

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.tick_seconds)  # let outcomes ending together batch up
            self._wake.clear()
            batch, self._pending = self._pending, []
            if batch:
                await self._flush(batch)
            if not self._pending:
                self._idle.set()

    async def _flush(self, batch: list[_Pending]) -> None:
        applied = await _until_stored(
            lambda: transitions.apply(self.jobs, [p.transition for p in batch]), "mongodb")
        applied_ids = {t.event.id for t in applied}
        settles = []
        for p in batch:
            owned = p.transition.event.id in applied_ids
            retry_at = p.transition.changes.get("run_at") if owned else None
            settles.append(Settle(p.delivery, release=owned,
                                  retry_at_ms=to_ms(retry_at) if retry_at else None))
            if not owned:
                log.warning("job.claim_lost", jobId=p.delivery.job_id,
                            entry=p.delivery.entry_id)
        events = [t.event.to_json() for t in applied]
        await _until_stored(lambda: self.queue.settle(settles, events), "redis")
        for p in batch:
            if not p.done.done():
                p.done.set_result(p.transition.event.id in applied_ids)


async def _until_stored(write: Any, store: str) -> Any:
    """Retry a write with capped backoff until it succeeds: an outcome is never dropped
    and an entry is never acknowledged before its outcome is stored."""
    delay = 0.05
    while True:
        try:
            return await write()
        except (PyMongoError, RedisError, OSError) as exc:
            log.warning("store.unavailable", store=store, error=str(exc), retryInSeconds=delay)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, 5.0)
