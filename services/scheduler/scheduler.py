"""The scheduler: promotes due delayed jobs, reclaims the entries of dead workers, and
rebuilds in Redis whatever Redis lost, from MongoDB (the source of truth).

Any number may run; one leads at a time through a lease lock in Redis, and only the
leader acts. Promotion is also safe without the lock: a due member moves to a stream
only if this caller removed it from the delayed set.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection

from shared import pages, transitions
from shared.clock import RedisClock, to_ms
from shared.keys import Lane
from shared.logs import get_log
from shared.models import ErrorInfo
from shared.queue import Delivery, Enqueue, RedisQueue, Settle, Waiting, member_job_id
from shared.settings import Settings
from shared.status import JobStatus, Priority
from shared.tenants import DEFAULT_TENANT

log = get_log(__name__)
PROMOTE_BATCH = 500
DEATHS_SAFETY_FACTOR = 3
"""A job whose runs died this many times ``max_deliveries`` in a row is failed even if
none of them ran alone (a safety net; suspects normally run alone)."""


def died_runs(doc: dict[str, Any]) -> tuple[int, int]:
    """How many runs in a row started (PROCESSING) without recording an outcome, and how
    many of those had their worker to themselves (``solo``).

    NOTE: only solo deaths say much about the job itself: a run that shared its worker
    may have died for a neighbour, and any run may die in an outside kill storm.
    """
    died = solo = 0
    for entry in reversed(doc.get("history", [])):
        if entry["status"] != JobStatus.PROCESSING:
            break
        died += 1
        solo += bool(entry.get("solo"))
    return died, solo


def is_poison(doc: dict[str, Any], max_deliveries: int) -> bool:
    died, solo = died_runs(doc)
    return solo >= max_deliveries or died >= max_deliveries * DEATHS_SAFETY_FACTOR


ReconcileCursor = tuple[datetime, str] | None


@dataclass
class Scheduler:
    settings: Settings
    jobs: AsyncCollection[dict[str, Any]]
    queue: RedisQueue
    clock: RedisClock
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    lease_until: float = 0.0
    """Monotonic time until which this instance's lease is known to hold."""
    reclaim_cursors: dict[Lane, str] = field(default_factory=dict)
    reconcile_cursors: dict[JobStatus, ReconcileCursor] = field(default_factory=dict)

    @property
    def is_leader(self) -> bool:
        """True while the last successful renewal's lease lasts: a renewal that fails
        (Redis slow or briefly away) does not drop leadership before the lease would."""
        return time.monotonic() < self.lease_until

    async def lead(self) -> bool:
        """Acquire or renew the lease; every other step runs only while it is held."""
        was = self.is_leader
        asked = time.monotonic()
        ttl = self.settings.leader_ttl_seconds
        if await self.queue.hold_leadership(self.token, int(ttl * 1000)):
            # NOTE: counted from before the request, so we stop leading no later than
            # Redis expires the lease.
            self.lease_until = asked + ttl
        else:
            self.lease_until = 0.0
        if self.is_leader != was:
            log.info("scheduler.leadership", leader=self.is_leader, token=self.token)
        return self.is_leader

    async def promote_due(self) -> int:
        """SCHEDULED -> QUEUED in MongoDB first, then the atomic move in Redis."""
        if not self.is_leader:
            return 0
        members = await self.queue.due(await self.queue.now_ms(), PROMOTE_BATCH)
        if not members:
            return 0
        ids = [member_job_id(m) for m in members]
        docs = {d["_id"]: d async for d in self.jobs.find({"_id": {"$in": ids}})}
        now = self.clock.now()
        plans = [transitions.requeue(d, now) for d in docs.values()
                 if d["status"] == JobStatus.SCHEDULED]
        applied = await transitions.apply(self.jobs, plans)
        queued = {t.job_id for t in applied} | {
            i for i, d in docs.items() if d["status"] == JobStatus.QUEUED}
        to_move = [m for m in members if member_job_id(m) in queued]
        # Members whose job is gone, finished or running have nothing left to wait for.
        stale = [m for m in members
                 if docs.get(member_job_id(m), {}).get("status") != JobStatus.SCHEDULED
                 and member_job_id(m) not in queued]
        moved = await self.queue.promote(to_move)
        await self.queue.drop_scheduled(stale)
        await self.queue.publish(t.event.to_json() for t in applied)
        if moved:
            log.info("scheduler.promoted", jobs=moved)
        return moved

    async def reclaim(self) -> int:
        """Give the entries of dead workers (idle past the visibility timeout) back to the
        queue, and FAIL poison pills (see :func:`is_poison`). Each lane's stream is
        scanned a page per call from where the last call stopped, so dead workers'
        entries behind many live ones are reached too.

        NOTE: runs are counted from the job's history, not from entry deliveries, so a
        job that merely sat unstarted in a crashed worker's hands is not counted.
        """
        if not self.is_leader:
            return 0
        lanes = await self.queue.lanes()
        self.reclaim_cursors, stale = await self.queue.claim_stale(
            {lane: self.reclaim_cursors.get(lane, "0-0") for lane in lanes},
            int(self.settings.visibility_timeout_seconds * 1000),
            self.settings.reclaim_page_size)
        if not stale:
            return 0
        docs = {d["_id"]: d async for d in self.jobs.find(
            {"_id": {"$in": [s.job_id for s in stale]}},
            {"status": 1, "claim": 1, "seq": 1, "attempt": 1, "history": 1,
             "callback_url": 1, "callback_events": 1, "callback_gone": 1,
             "retention_seconds": 1, "history_limit": 1})}
        requeue, poison, done = [], [], []
        for entry in stale:
            doc = docs.get(entry.job_id)
            status = doc and doc["status"]
            if status == JobStatus.QUEUED:
                requeue.append(replace(entry, prev=None))
            elif (status == JobStatus.PROCESSING and doc
                  and doc.get("claim") in (entry.entry_id, entry.prev)):
                # NOTE: an entry that was itself a requeue (prev = the claim) and died
                # unstarted in a worker's hands still owns the job: keep it going.
                if is_poison(doc, self.settings.max_deliveries):
                    poison.append((entry, doc))
                else:
                    requeue.append(replace(entry, prev=doc["claim"]))
            else:
                # Finished (its worker died before acknowledging), gone, or owned by
                # another entry: nothing to run.
                done.append(Settle(entry))
        await self.queue.requeue(requeue)
        if requeue:
            log.warning("scheduler.reclaimed", entries=len(requeue),
                        jobIds=[e.job_id for e in requeue[:20]])
        await self._fail_poison(poison, done)
        return len(stale)

    async def _fail_poison(self, poison: list[tuple[Delivery, Any]],
                           done: list[Settle]) -> None:
        now = self.clock.now()
        error = ErrorInfo(
            type="PoisonPill",
            message=f"{self.settings.max_deliveries} runs in a row, each alone on its "
                    "worker, died before recording an outcome (worker crashed or was "
                    "killed); not retried")
        applied = await transitions.apply(
            self.jobs, [transitions.fail(doc, error, now) for _, doc in poison])
        for t in applied:
            log.error("job.poison_pill", jobId=t.job_id, runs=self.settings.max_deliveries)
        await self.queue.settle(done + [Settle(entry) for entry, _ in poison],
                                [t.event.to_json() for t in applied])

    async def reconcile(self) -> int:
        """Put back what Redis lost (restart without persistence, FLUSHALL, an enqueue
        that failed after the insert, an entry acknowledged by mistake): MongoDB says
        what must be waiting. Each call checks one page per active status, oldest
        first, continuing from where the last call stopped and starting over after the
        last page, so every job is reached however many wait in front of it."""
        if not self.is_leader:
            return 0
        await self.queue.ensure_groups()
        now = self.clock.now()
        cutoff = now - timedelta(seconds=self.settings.reconcile_grace_seconds)
        stale_run = now - timedelta(seconds=self.settings.visibility_timeout_seconds * 2)
        waiting: list[Waiting] = []
        run_at: dict[str, Any] = {}
        for status, before in ((JobStatus.QUEUED, cutoff), (JobStatus.SCHEDULED, cutoff),
                               (JobStatus.PROCESSING, stale_run)):
            for d in await self._reconcile_page(status, before):
                waiting.append(Waiting(d["_id"], Priority(d["priority"]), claim=d.get("claim"),
                                       delayed=status is JobStatus.SCHEDULED,
                                       tenant=d.get("tenant", DEFAULT_TENANT)))
                run_at[d["_id"]] = d.get("run_at")
        lost = await self.queue.lost(waiting)
        work = [Enqueue(w.job_id, w.priority, prev=w.claim, tenant=w.tenant,
                        run_at_ms=(to_ms(run_at[w.job_id]) if run_at[w.job_id] else 0)
                        if w.delayed else None)
                for w in lost]
        if work:
            await self.queue.enqueue(work)
            log.warning("scheduler.reconciled", restored=len(work),
                        jobIds=[w.job_id for w in work[:20]])
        return len(work)

    async def _reconcile_page(self, status: JobStatus, before: datetime
                              ) -> list[dict[str, Any]]:
        size = self.settings.reconcile_page_size
        found = await pages.page(
            self.jobs, {"status": status.value, "updated_at": {"$lt": before}},
            {"_id": 1, "priority": 1, "tenant": 1, "run_at": 1, "claim": 1, "created_at": 1},
            self.reconcile_cursors.get(status), size, newest_first=False)
        self.reconcile_cursors[status] = (
            (found[-1]["created_at"], found[-1]["_id"]) if len(found) == size else None)
        return found
