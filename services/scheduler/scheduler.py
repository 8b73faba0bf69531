"""The scheduler: promotes due delayed jobs, reclaims the entries of dead workers, and
rebuilds in Redis whatever Redis lost, from MongoDB (the source of truth).

Any number may run; one leads at a time through a lease lock in Redis, and only the
leader acts. Promotion is also safe without the lock: a due member moves to a stream
only if this caller removed it from the delayed set.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection

from shared import transitions
from shared.clock import RedisClock, to_ms
from shared.logs import get_log
from shared.models import ErrorInfo
from shared.queue import Delivery, Enqueue, RedisQueue, Settle, member_job_id
from shared.settings import Settings
from shared.status import JobStatus, Priority

log = get_log(__name__)
PROMOTE_BATCH = 500
RECLAIM_BATCH = 100
RECONCILE_BATCH = 5000


def died_runs(doc: dict[str, Any]) -> int:
    """How many runs in a row started (PROCESSING) without recording an outcome."""
    died = 0
    for entry in reversed(doc.get("history", [])):
        if entry["status"] != JobStatus.PROCESSING:
            break
        died += 1
    return died


@dataclass
class Scheduler:
    settings: Settings
    jobs: AsyncCollection[dict[str, Any]]
    queue: RedisQueue
    clock: RedisClock
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    is_leader: bool = False

    async def lead(self) -> bool:
        """Acquire or renew the lease; every other step runs only while it is held."""
        was = self.is_leader
        self.is_leader = await self.queue.hold_leadership(
            self.token, int(self.settings.leader_ttl_seconds * 1000))
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
        queue, and FAIL poison pills: jobs whose last ``max_deliveries`` runs all died
        before recording an outcome.

        NOTE: runs are counted from the job's history, not from entry deliveries, so a
        job that merely sat unstarted in a crashed worker's hands is not counted.
        """
        if not self.is_leader:
            return 0
        stale = await self.queue.claim_stale(
            int(self.settings.visibility_timeout_seconds * 1000), RECLAIM_BATCH)
        if not stale:
            return 0
        docs = {d["_id"]: d async for d in self.jobs.find(
            {"_id": {"$in": [s.job_id for s in stale]}},
            {"status": 1, "claim": 1, "seq": 1, "attempt": 1, "history": 1,
             "callback_url": 1, "callback_events": 1})}
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
                if died_runs(doc) >= self.settings.max_deliveries:
                    poison.append((entry, doc))
                else:
                    requeue.append(replace(entry, prev=doc["claim"]))
            else:
                # Finished (its worker died before acknowledging), gone, or owned by
                # another entry: nothing to run.
                done.append(Settle(entry, release=status != JobStatus.PROCESSING))
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
            message=f"{self.settings.max_deliveries} runs in a row died before recording "
                    "an outcome (worker crashed or was killed); not retried")
        applied = await transitions.apply(
            self.jobs, [transitions.fail(doc, error, now) for _, doc in poison])
        for t in applied:
            log.error("job.poison_pill", jobId=t.job_id, runs=self.settings.max_deliveries)
        await self.queue.settle(done + [Settle(entry) for entry, _ in poison],
                                [t.event.to_json() for t in applied])

    async def reconcile(self) -> int:
        """Put back what Redis lost (restart without persistence, FLUSHALL, an enqueue
        that failed after the insert): MongoDB says what must be waiting."""
        if not self.is_leader:
            return 0
        await self.queue.ensure_groups()
        now = self.clock.now()
        cutoff = now - timedelta(seconds=self.settings.reconcile_grace_seconds)
        stale_run = now - timedelta(seconds=self.settings.visibility_timeout_seconds * 2)
        projection = {"_id": 1, "priority": 1, "run_at": 1, "claim": 1}
        # NOTE: hinted, since some servers' planners give up the index for the range.
        waiting = {status: await self.jobs.find(
            {"status": status.value, "updated_at": {"$lt": before}}, projection
        ).sort([("created_at", 1), ("_id", 1)]).hint("status_created").limit(
            RECONCILE_BATCH).to_list()
            for status, before in ((JobStatus.QUEUED, cutoff), (JobStatus.SCHEDULED, cutoff),
                                   (JobStatus.PROCESSING, stale_run))}
        ready = waiting[JobStatus.QUEUED] + waiting[JobStatus.PROCESSING]
        delayed = waiting[JobStatus.SCHEDULED]
        lost_ready, lost_delayed = await self.queue.missing(
            [d["_id"] for d in ready], [(d["_id"], Priority(d["priority"])) for d in delayed])
        lost = set(lost_ready) | set(lost_delayed)
        work = [Enqueue(d["_id"], Priority(d["priority"]), prev=d.get("claim"))
                for d in ready if d["_id"] in lost]
        work += [Enqueue(d["_id"], Priority(d["priority"]),
                         run_at_ms=to_ms(d["run_at"]) if d.get("run_at") else 0)
                 for d in delayed if d["_id"] in lost]
        if work:
            await self.queue.enqueue(work)
            log.warning("scheduler.reconciled", restored=len(work),
                        jobIds=[w.job_id for w in work[:20]])
        return len(work)
