"""Retention: finished jobs are deleted once they expire, with everything they left.

A job gets ``expires_at`` when it finishes (finished_at + its retention, see
shared.transitions.expiry). The scheduler's leader sweeps expired jobs a page at a time,
soonest first, through the ``expires`` index, and deletes for each page: the artifacts
(GridFS chunks, then files), the delivery log, then the jobs. The job goes last, so a
sweep that dies half-way leaves every job it had not finished still expired, and the
next sweep completes the work; the idempotency key lives on the job and goes with it.

Not a TTL index: TTL cannot take the artifacts and deliveries along. A job whose webhook
events are still being delivered (its outbox is due) is kept until they are delivered
or given up, and a job retried by hand in between no longer expires (its delete filter
no longer matches; it runs again and makes its artifacts again).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection

from services.scheduler.scheduler import Scheduler
from shared.artifacts import ArtifactStore
from shared.logs import get_log
from shared.status import TERMINAL

log = get_log(__name__)
MAX_PAGES_PER_SWEEP = 20
"""A sweep stops after this many pages; the next one goes on (bounded step time)."""


@dataclass
class Retention:
    scheduler: Scheduler
    deliveries: AsyncCollection[dict[str, Any]]
    artifacts: ArtifactStore

    async def sweep(self) -> int:
        """Delete expired jobs with their artifacts and delivery logs (leader only);
        return how many jobs were deleted."""
        deleted = 0
        for _ in range(MAX_PAGES_PER_SWEEP):
            if not self.scheduler.is_leader:
                break
            page, removed = await self._sweep_page()
            deleted += removed
            if page < self.scheduler.settings.retention_sweep_page_size:
                break
        if deleted:
            log.info("retention.swept", jobs=deleted)
        return deleted

    def _expired(self) -> dict[str, Any]:
        return {"expires_at": {"$lte": self.scheduler.clock.now()},
                "status": {"$in": [s.value for s in TERMINAL]},
                "outbox_due_at": None}

    async def _sweep_page(self) -> tuple[int, int]:
        """One page: (jobs found, jobs deleted)."""
        jobs = self.scheduler.jobs
        # NOTE: hinted, so the server walks the expires index from the soonest, whatever
        # its planner makes of the other conditions.
        ids = [d["_id"] for d in await jobs.find(self._expired(), {"_id": 1}).sort(
            "expires_at", 1).hint("expires").limit(
            self.scheduler.settings.retention_sweep_page_size).to_list()]
        if not ids:
            return 0, 0
        await self.artifacts.delete_for_jobs(ids)
        await self.deliveries.delete_many({"job_id": {"$in": ids}})
        # NOTE: the same conditions again: a job retried or redelivered since it was
        # read is kept (its children are gone; a rerun makes its artifacts again).
        result = await jobs.delete_many({"_id": {"$in": ids}, **self._expired()})
        return len(ids), result.deleted_count
