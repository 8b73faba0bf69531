"""The only place a job's status changes.

Each transition is one conditional MongoDB update whose filter names the status and the
``seq`` the writer last saw. ``seq`` grows by one with every event, so a duplicate
delivery, a late worker that lost its claim, or two racing writers can never move a job
backwards or finish it twice: the second writer's filter simply matches nothing.
The same update appends the status event to the history and (when the job has a
callback URL that wants it) to the webhook outbox.

Nothing in a job grows without bound: the history keeps its first event
(``history_first``) and its last ``history_limit`` events (``history``, contiguous, so
event ``seq - len(history) + 1`` is its first); tracebacks are cut to a tail; events
carry ids and status, not results (a webhook gets a small result, or where to fetch
it); and a finished job gets ``expires_at``, when the scheduler deletes it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pymongo import UpdateOne
from pymongo.asynchronous.collection import AsyncCollection

from shared.errors import Conflict, NotFound
from shared.events import Event, event_type, webhook_result
from shared.ids import new_event_id
from shared.models import ErrorInfo
from shared.status import JobStatus

DEFAULT_RETENTION_SECONDS = 7 * 86400
"""How long a finished job is kept when its document does not say (the API always
stores the submit's ``retentionSeconds`` or JOBQUEUE_RETENTION_SECONDS)."""
DEFAULT_HISTORY_LIMIT = 100
"""Last history entries kept when the job does not say (JOBQUEUE_HISTORY_LIMIT)."""
DEFAULT_WEBHOOK_MAX_RESULT_BYTES = 16 * 1024
"""Largest result a webhook carries by default (JOBQUEUE_WEBHOOK_MAX_RESULT_BYTES)."""
TRACEBACK_TAIL_LINES, TRACEBACK_TAIL_CHARS = 60, 8192
"""``error.traceback`` keeps at most its last 60 lines and 8,192 characters: enough for a
process handler's traceback, whose child part comes first (chained as the cause)."""
HISTORY_TRACEBACK_LINES, HISTORY_TRACEBACK_CHARS = 5, 512
"""A history entry's error keeps at most its last 5 lines and 512 characters."""
ERROR_MESSAGE_CHARS = 2000

S = JobStatus
ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    S.QUEUED: frozenset({S.PROCESSING, S.CANCELLED}),
    S.SCHEDULED: frozenset({S.QUEUED, S.CANCELLED}),
    # PROCESSING -> PROCESSING: a redelivered run takes over from a worker that died.
    # PROCESSING -> QUEUED: a worker stopping gracefully hands back a run it interrupted.
    S.PROCESSING: frozenset({S.PROCESSING, S.QUEUED, S.COMPLETED, S.SCHEDULED, S.FAILED,
                             S.CANCELLED}),
    S.COMPLETED: frozenset(),
    S.FAILED: frozenset({S.QUEUED}),
    S.CANCELLED: frozenset({S.QUEUED}),
}

Doc = dict[str, Any]


@dataclass
class Transition:
    """One planned status change: a filter, an update, and the event it records."""

    job_id: str
    expected_status: JobStatus
    expected_seq: int
    event: Event
    changes: dict[str, Any] = field(default_factory=dict)
    increments: dict[str, int] = field(default_factory=dict)
    history: dict[str, Any] = field(default_factory=dict)
    history_limit: int = DEFAULT_HISTORY_LIMIT
    to_outbox: bool = False
    outbox_data: dict[str, Any] = field(default_factory=dict)
    """Added to the event's ``data`` in the webhook outbox only (never published)."""

    @property
    def filter(self) -> Doc:
        return {"_id": self.job_id, "status": self.expected_status.value,
                "seq": self.expected_seq}

    @property
    def update(self) -> Doc:
        # NOTE: keeps the last entries only; the first is kept in history_first.
        push: Doc = {"history": {"$each": [self.history], "$slice": -self.history_limit}}
        update: Doc = {
            "$set": {**self.changes, "status": self.event.status.value,
                     "seq": self.event.seq, "updated_at": self.event.at},
            "$push": push,
        }
        if self.to_outbox:
            push["outbox"] = outbox_entry(self.event, self.outbox_data)
            update["$min"] = {"outbox_due_at": self.event.at}
        if self.increments:
            update["$inc"] = self.increments
        return update


def outbox_entry(event: Event, data: Doc | None = None) -> Doc:
    """An event waiting in the job's webhook outbox, with its delivery bookkeeping;
    ``data`` is added to the event's data for the webhook alone."""
    entry = {**event.model_dump(), "attempts": 0, "next_at": event.at}
    if data:
        entry["data"] = {**entry["data"], **data}
    return entry


def tail(text: str | None, lines: int, chars: int) -> str | None:
    """The end of ``text``: at most its last ``lines`` lines and ``chars`` characters."""
    if text is None:
        return None
    return "".join(text.splitlines(keepends=True)[-lines:])[-chars:]


def bounded(error: ErrorInfo, lines: int = TRACEBACK_TAIL_LINES,
            chars: int = TRACEBACK_TAIL_CHARS) -> Doc:
    """An error as stored: message and traceback cut to their documented sizes."""
    return {"type": error.type, "message": error.message[:ERROR_MESSAGE_CHARS],
            "traceback": tail(error.traceback, lines, chars)}


def _brief(error: ErrorInfo) -> Doc:
    """An error as events carry it: type and message, no traceback."""
    return {"type": error.type, "message": error.message[:ERROR_MESSAGE_CHARS]}


def expiry(doc: Doc, finished_at: datetime) -> datetime:
    """When a job finished at ``finished_at`` is deleted with its artifacts, delivery
    log and idempotency key."""
    seconds = doc.get("retention_seconds") or DEFAULT_RETENTION_SECONDS
    return finished_at + timedelta(seconds=seconds)


def wants_webhook(doc: Doc, status: JobStatus) -> bool:
    if not doc.get("callback_url") or doc.get("callback_gone"):
        return False
    wanted = doc.get("callback_events")
    return not wanted or event_type(status) in wanted


def _plan(doc: Doc, to: JobStatus, now: datetime, *, attempt: int | None = None,
          changes: Doc | None = None, increments: dict[str, int] | None = None,
          data: Doc | None = None, error: ErrorInfo | None = None,
          worker_id: str | None = None, note: Doc | None = None) -> Transition:
    current = JobStatus(doc["status"])
    if to not in ALLOWED[current]:
        raise Conflict(f"a {current.value} job cannot become {to.value}",
                       code="illegal_transition",
                       details={"status": current.value, "requested": to.value})
    attempt = doc.get("attempt", 0) if attempt is None else attempt
    event = Event(id=new_event_id(), type=event_type(to), job_id=doc["_id"], status=to,
                  attempt=attempt, seq=doc.get("seq", 0) + 1, at=now, data=data or {})
    history: Doc = {"status": to.value, "at": now, "attempt": attempt, "event_id": event.id,
                    "worker_id": worker_id}
    if error is not None:
        history["error"] = bounded(error, HISTORY_TRACEBACK_LINES, HISTORY_TRACEBACK_CHARS)
    history.update(note or {})
    return Transition(job_id=doc["_id"], expected_status=current,
                      expected_seq=doc.get("seq", 0), event=event,
                      changes=changes or {}, increments=increments or {}, history=history,
                      history_limit=doc.get("history_limit") or DEFAULT_HISTORY_LIMIT,
                      to_outbox=wants_webhook(doc, to))


def new_job(fields: Doc, now: datetime) -> tuple[Doc, Event]:
    """The document to insert for a submitted job, with its first event already in it.

    ``fields`` holds the submission (``_id``, job_type, payload, priority, run_at, …);
    a ``run_at`` in the future makes the job SCHEDULED, otherwise it is QUEUED.
    """
    run_at = fields.get("run_at")
    status = S.SCHEDULED if run_at is not None and run_at > now else S.QUEUED
    doc: Doc = {**fields, "status": status.value, "retries": 0, "attempt": 0, "seq": 0,
                "history": [], "outbox": [], "result": None, "error": None, "claim": None,
                "cancel_requested": False, "artifacts": [], "worker_id": None,
                "created_at": now, "updated_at": now, "started_at": None,
                "finished_at": None}
    if status is S.QUEUED:
        doc["run_at"] = None
    data = {"runAt": run_at.isoformat()} if status is S.SCHEDULED and run_at else {}
    event = Event(id=new_event_id(), type=event_type(status), job_id=doc["_id"],
                  status=status, attempt=0, seq=1, at=now, data=data)
    doc["seq"] = 1
    first = {"status": status.value, "at": now, "attempt": 0, "event_id": event.id,
             "worker_id": None}
    doc["history"] = [first]
    doc["history_first"] = first
    if wants_webhook(doc, status):
        doc["outbox"] = [outbox_entry(event)]
        doc["outbox_due_at"] = now
    return doc, event


def claim(doc: Doc, *, entry_id: str, worker_id: str, now: datetime,
          solo: bool = False) -> Transition:
    """A run starts: QUEUED -> PROCESSING, owned by stream entry ``entry_id``.

    For a PROCESSING job this is a takeover: the reclaimer re-added the entry of a run
    whose worker died, naming that run's claim (see queue.Delivery.prev), and the new
    run replaces it. The attempt counts up either way. ``solo`` records in the history
    that the run had its worker to itself (a suspect after earlier deaths): only such
    runs that die count towards the poison-pill cap (see scheduler.solo_deaths).
    """
    attempt = doc.get("attempt", 0) + 1
    redelivered = JobStatus(doc["status"]) is S.PROCESSING
    return _plan(doc, S.PROCESSING, now, attempt=attempt, worker_id=worker_id,
                 data={"redelivered": True} if redelivered else None,
                 note={"solo": True} if solo else None,
                 changes={"claim": entry_id, "worker_id": worker_id, "started_at": now,
                          "attempt": attempt})


def complete(doc: Doc, result: Any, now: datetime, *, worker_id: str | None = None,
             extra: Doc | None = None,
             webhook_max_result_bytes: int = DEFAULT_WEBHOOK_MAX_RESULT_BYTES
             ) -> Transition:
    """PROCESSING -> COMPLETED. The event carries no result; the job's webhook gets it
    when it is at most ``webhook_max_result_bytes`` (see events.webhook_result)."""
    t = _plan(doc, S.COMPLETED, now, worker_id=worker_id,
              changes={"result": result, "error": None, "finished_at": now,
                       "expires_at": expiry(doc, now), "claim": None,
                       "cancel_requested": False, **(extra or {})})
    if t.to_outbox:
        t.outbox_data = webhook_result(doc["_id"], result, webhook_max_result_bytes)
    return t


def fail(doc: Doc, error: ErrorInfo, now: datetime, *,
         worker_id: str | None = None) -> Transition:
    return _plan(doc, S.FAILED, now, worker_id=worker_id, error=error,
                 data={"error": _brief(error)},
                 changes={"error": bounded(error), "finished_at": now,
                          "expires_at": expiry(doc, now), "claim": None,
                          "cancel_requested": False})


def retry_later(doc: Doc, error: ErrorInfo, run_at: datetime, now: datetime, *,
                worker_id: str | None = None) -> Transition:
    """PROCESSING -> SCHEDULED: the attempt failed and waits out its backoff.

    NOTE: ``cancel_requested`` is kept, not cleared: a cancel that landed after the worker
    last looked is then honoured when the retry is claimed (see worker.claiming)."""
    return _plan(doc, S.SCHEDULED, now, worker_id=worker_id, error=error,
                 data={"runAt": run_at.isoformat(),
                       "error": _brief(error)},
                 changes={"run_at": run_at, "error": bounded(error), "claim": None},
                 increments={"retries": 1})


def cancel(doc: Doc, now: datetime, *, worker_id: str | None = None) -> Transition:
    return _plan(doc, S.CANCELLED, now, worker_id=worker_id,
                 changes={"finished_at": now, "expires_at": expiry(doc, now), "claim": None,
                          "cancel_requested": False})


def requeue(doc: Doc, now: datetime) -> Transition:
    """SCHEDULED -> QUEUED (its time has come), or FAILED/CANCELLED -> QUEUED (manual
    retry, which grants the job a fresh set of retries)."""
    changes: Doc = {"run_at": None}
    if JobStatus(doc["status"]) in (S.FAILED, S.CANCELLED):
        changes.update({"retries": 0, "error": None, "result": None, "finished_at": None,
                        "expires_at": None, "cancel_requested": False})
    return _plan(doc, S.QUEUED, now, changes=changes)


def interrupt(doc: Doc, now: datetime, *, worker_id: str) -> Transition:
    """PROCESSING -> QUEUED: a worker stopping gracefully gave up a run at the end of its
    grace period. The run is recorded as interrupted, so it does not count as a death
    towards the poison-pill cap, and the job is queued to run again at once."""
    return _plan(doc, S.QUEUED, now, worker_id=worker_id, data={"interrupted": True},
                 note={"interrupted": True}, changes={"claim": None})


async def apply(jobs: AsyncCollection[Doc], transitions: list[Transition]) -> list[Transition]:
    """Apply transitions in one round trip; return those that are recorded.

    A transition that matched nothing lost a race (the job moved on) and is dropped,
    unless its event is already in the job's history: then an earlier send of the same
    transition applied it and only the reply was lost.
    """
    if not transitions:
        return []
    if len(transitions) == 1:
        t = transitions[0]
        matched = (await jobs.update_one(t.filter, t.update)).matched_count
    else:
        matched = (await jobs.bulk_write(
            [UpdateOne(t.filter, t.update) for t in transitions], ordered=False)).matched_count
    if matched == len(transitions):
        return transitions
    # NOTE: the recorded event ids say which applied: bulk results only count matches,
    # and a transition re-sent after its reply was lost (the first send applied it) no
    # longer matches its filter, yet it is this writer's.
    recorded = {
        entry["event_id"]
        async for doc in jobs.find(
            {"_id": {"$in": list({t.job_id for t in transitions})}},
            {"history.event_id": 1})
        for entry in doc.get("history", [])
    }
    return [t for t in transitions if t.event.id in recorded]


def advanced(doc: Doc, t: Transition) -> Doc:
    """The document as it is after ``t`` applied (for the writer's next transition)."""
    new = {**doc, **t.changes, "status": t.event.status.value, "seq": t.event.seq,
           "updated_at": t.event.at}
    for name, step in t.increments.items():
        new[name] = new.get(name, 0) + step
    return new


async def change(jobs: AsyncCollection[Doc], job_id: str,
                 planner: Callable[[Doc], Transition | None],
                 attempts: int = 5) -> tuple[Doc, Transition | None]:
    """Read a job, plan a transition from what it is now, apply it; re-read and re-plan
    if another writer got there first. ``planner`` may return None (nothing to change)
    or raise Conflict."""
    for _ in range(attempts):
        doc = await jobs.find_one({"_id": job_id})
        if doc is None:
            raise NotFound(f"no job {job_id!r}", details={"jobId": job_id})
        t = planner(doc)
        if t is None:
            return doc, None
        if await apply(jobs, [t]):
            return advanced(doc, t), t
    raise Conflict("the job kept changing while this request ran; try again",
                   code="concurrent_change")
