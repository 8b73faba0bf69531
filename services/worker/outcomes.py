"""How a run ended, and the batched writer that records outcomes.

Outcomes of runs that end close together are written with one MongoDB ``bulk_write``
and settled in Redis with one script call, instead of two round trips per job. A run's
entry is acknowledged only after its outcome is stored: while a store is unreachable the
recorder keeps retrying (capped backoff) and acknowledges nothing. An outcome MongoDB
refuses for good (a document over its size limit, say) is replaced by a FAILED outcome
carrying that error, so the job settles instead of wedging the worker.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from bson.errors import InvalidDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import ConnectionFailure, ExecutionTimeout, PyMongoError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

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
T = TypeVar("T")
TRANSIENT = (ConnectionFailure, ExecutionTimeout, RedisConnectionError, RedisTimeoutError,
             OSError)
"""Errors of a store that did not answer: worth retrying. Anything else is final."""
REFUSED = (PyMongoError, InvalidDocument, OverflowError)
"""MongoDB refused the write itself (not transient): retrying cannot help."""


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
            extra={"artifacts": [a.model_dump() for a in outcome.artifacts]},
            webhook_max_result_bytes=settings.webhook_max_result_bytes)
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
    doc: transitions.Doc
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

    async def flushed(self) -> None:
        """Wait until every recorded outcome is stored and settled."""
        await self._idle.wait()

    async def record(self, delivery: Delivery, doc: transitions.Doc,
                     transition: transitions.Transition) -> bool:
        """Store the outcome, then settle the entry; True if this run still owned the job.

        ``doc`` is the job as the run saw it, to plan a FAILED outcome instead if MongoDB
        refuses this one."""
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(delivery, doc, transition, done))
        self._idle.clear()
        self._wake.set()
        return await done

    async def run(self) -> None:
        """The recorder's loop; run it as a supervised task for the worker's lifetime."""
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
        try:
            applied = await until_stored(
                lambda: transitions.apply(self.jobs, [p.transition for p in batch]),
                "mongodb")
        except REFUSED:
            applied = [t for p in batch for t in await self._store_alone(p)]
        applied_ids = {t.event.id for t in applied}
        settles = []
        for p in batch:
            owned = p.transition.event.id in applied_ids
            retry_at = p.transition.changes.get("run_at") if owned else None
            settles.append(Settle(p.delivery,
                                  retry_at_ms=to_ms(retry_at) if retry_at else None))
            if not owned:
                log.warning("job.claim_lost", jobId=p.delivery.job_id,
                            entry=p.delivery.entry_id)
        events = [t.event.to_json() for t in applied]
        await until_stored(lambda: self.queue.settle(settles, events), "redis")
        for p in batch:
            if not p.done.done():
                p.done.set_result(p.transition.event.id in applied_ids)

    async def _store_alone(self, p: _Pending) -> list[transitions.Transition]:
        """Store one outcome on its own; if MongoDB refuses it, fail the job with the
        reason instead (and if even that is refused, raise: the worker must stop)."""
        try:
            return await until_stored(lambda: transitions.apply(self.jobs, [p.transition]),
                                      "mongodb")
        except REFUSED as exc:
            error = ErrorInfo(type="OutcomeNotStored",
                              message=f"MongoDB refused the outcome: {exc}"[:1000])
            log.error("job.outcome_refused", jobId=p.delivery.job_id, error=error.message)
            p.transition = transitions.fail(p.doc, error, p.transition.event.at,
                                            worker_id=p.transition.history.get("worker_id"))
            return await until_stored(lambda: transitions.apply(self.jobs, [p.transition]),
                                      "mongodb")


async def until_stored(write: Callable[[], Awaitable[T]], store: str) -> T:
    """Retry a write with capped backoff while its store does not answer: an outcome is
    never dropped and an entry never acknowledged before its outcome is stored. Errors
    that are not about reaching the store propagate at once."""
    delay = 0.05
    while True:
        try:
            return await write()
        except TRANSIENT as exc:
            log.warning("store.unavailable", store=store, error=str(exc), retryInSeconds=delay)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, 5.0)
