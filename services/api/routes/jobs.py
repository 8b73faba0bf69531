"""The jobs resource: submit, status, list, cancel, retry."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from redis.exceptions import RedisError

from services.api.auth import Principal
from services.api.deps import Context, Reader, Writer
from services.api.schemas import (
    IDEMPOTENCY_KEY,
    BatchSubmitRequest,
    BatchSubmitResponse,
    JobPage,
    JobPublic,
    JobStatusResponse,
    JobSummary,
    SubmitRequest,
    SubmitResponse,
    error_responses,
    from_doc,
)
from services.api.submit import Accepted
from shared import pages, transitions
from shared.errors import ApiError, Conflict, InvalidInput, NotFound
from shared.logs import get_log
from shared.queue import Enqueue, scheduled_member
from shared.status import RETRYABLE_BY_USER, JobStatus, Priority
from shared.tenants import DEFAULT_TENANT
from shared.typelimits import leave_line

log = get_log(__name__)

# NOTE: every route here may answer these; the submit routes add their own below.
router = APIRouter(tags=["jobs"], responses=error_responses(401, 403, 404, 409, 422, 503))
SUBMIT_ERRORS = error_responses(400, 413, 429)
SUBMIT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": SubmitResponse,
          "description": "The idempotency key matched an earlier identical request: that job."},
    **SUBMIT_ERRORS}
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", min_length=1,
                                              max_length=255, pattern=IDEMPOTENCY_KEY)]
PREPARE_CONCURRENCY = 32
"""Jobs of a batch validated at once (their callback URLs' DNS look-ups overlap)."""
RETRY_MAX_PENDING_EVENTS = 50
"""A job whose outbox holds this many undelivered webhook events is not retried by hand
(409 ``outbox_full``): a cancel-and-retry loop against a failing callback would grow it
without end."""


def _answer(accepted: Accepted, response: Response) -> SubmitResponse:
    response.status_code = 202 if accepted.created else 200
    return SubmitResponse(job_id=accepted.job_id, status=accepted.status)


@router.post("/submit-job", status_code=202, response_model=SubmitResponse,
             responses=SUBMIT_RESPONSES)
@router.post("/jobs", status_code=202, response_model=SubmitResponse,
             responses=SUBMIT_RESPONSES)
async def submit_job(body: SubmitRequest, ctx: Context, caller: Writer, response: Response,
                     request: Request, idempotency_key: IdempotencyKey = None
                     ) -> SubmitResponse:
    """Accept a job: 202 once it is stored; 200 with the original job when its
    idempotency key was seen before (by the same tenant)."""
    if len(request.headers.getlist("idempotency-key")) > 1:
        # NOTE: the header framework would quietly take one of them; which one the
        # client meant is unknowable, and a wrong guess makes or hides a duplicate.
        raise ApiError("the Idempotency-Key header was sent more than once; send it once",
                       code="duplicate_header", details={"header": "Idempotency-Key"})
    if idempotency_key and body.idempotency_key not in (None, idempotency_key):
        raise ApiError("the Idempotency-Key header and the body's idempotencyKey differ; "
                       "send one of them", code="conflicting_idempotency_keys",
                       details={"header": "Idempotency-Key", "field": "idempotencyKey"})
    if idempotency_key:
        body.idempotency_key = idempotency_key
    # NOTE: taken once the request has the right shape, before the costly checks (the
    # job type's payload, resolving the callback's host): a key over its rate cannot
    # make the API do that work for free, and a refused request stores nothing.
    await ctx.submit_rate.take(caller, 1)
    fields = await ctx.submitter.prepare(body, tenant=caller.tenant)
    return _answer(await ctx.submitter.submit(fields), response)


@router.post("/jobs/batch", status_code=202, response_model=BatchSubmitResponse,
             responses=SUBMIT_ERRORS)
async def submit_batch(body: BatchSubmitRequest, ctx: Context, caller: Writer
                       ) -> BatchSubmitResponse:
    """Accept many jobs at once; nothing is stored unless every one is valid. Each job
    counts against the submit rate (before the jobs are checked one by one)."""
    await ctx.submit_rate.take(caller, len(body.jobs))
    gate = asyncio.Semaphore(PREPARE_CONCURRENCY)

    async def prepare(i: int, request: SubmitRequest) -> dict[str, Any]:
        async with gate:
            return await ctx.submitter.prepare(request, where=("jobs", i),
                                               tenant=caller.tenant)

    prepared = await asyncio.gather(*(prepare(i, r) for i, r in enumerate(body.jobs)),
                                    return_exceptions=True)
    fields: list[dict[str, Any]] = []
    problems: list[Any] = []
    for result in prepared:
        if isinstance(result, InvalidInput):
            problems += result.details
        elif isinstance(result, BaseException):
            raise result
        else:
            fields.append(result)
    if problems:
        raise InvalidInput("some jobs in the batch are invalid; none was stored",
                           details=problems)
    accepted = await ctx.submitter.submit_batch(fields)
    return BatchSubmitResponse(jobs=[SubmitResponse(job_id=a.job_id, status=a.status)
                                     for a in accepted])


async def load_job(ctx: Context, caller: Principal, job_id: str,
                   projection: dict[str, Any] | None = None) -> dict[str, Any]:
    """The job, if the caller may see it; else 404, as for a job that does not exist."""
    doc: dict[str, Any] | None = await ctx.jobs.find_one({"_id": job_id, **caller.mine()},
                                                         projection)
    if doc is None:
        raise NotFound(f"no job {job_id!r}", details={"jobId": job_id})
    return doc


@router.get("/job-status/{job_id}", response_model=JobStatusResponse)
async def job_status(job_id: str, ctx: Context, caller: Reader) -> Any:
    doc = await load_job(ctx, caller, job_id,
                         {"payload": 0, "history": 0, "outbox": 0, "result": 0})
    return from_doc(JobStatusResponse, doc)


@router.get("/jobs/{job_id}", response_model=JobPublic)
async def get_job(job_id: str, ctx: Context, caller: Reader) -> Any:
    return from_doc(JobPublic, await load_job(ctx, caller, job_id, {"outbox": 0}))


def _encode_cursor(doc: dict[str, Any]) -> str:
    raw = json.dumps([doc["created_at"].timestamp(), doc["_id"]]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (createdAt, jobId) a cursor points after; anything but the
    ``[seconds, "job_..."]`` pair _encode_cursor writes is a 422 ``invalid_cursor``."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        decoded = json.loads(base64.urlsafe_b64decode(padded))
        ts, job_id = decoded if isinstance(decoded, list) else (None, None)
        if (isinstance(ts, int | float) and not isinstance(ts, bool)
                and isinstance(job_id, str) and len(job_id) <= 100):
            return datetime.fromtimestamp(ts, UTC), job_id  # ValueError/OverflowError
    except (ValueError, TypeError, OverflowError, OSError, RecursionError):
        pass
    raise InvalidInput("cursor is not one this API returned", code="invalid_cursor",
                       details=[{"field": "cursor", "message": "invalid cursor",
                                 "type": "invalid_cursor"}])


@router.get("/jobs", response_model=JobPage)
async def list_jobs(ctx: Context, caller: Reader, status: JobStatus | None = None,
                    job_type: Annotated[str | None, Query(alias="jobType", max_length=100)] = None,
                    limit: Annotated[int, Query(ge=1, le=500)] = 50,
                    cursor: Annotated[str | None, Query(max_length=512)] = None) -> JobPage:
    """Jobs newest first, filtered by status and/or jobType, a page at a time: the
    caller's tenant's (every tenant's for an admin key)."""
    query: dict[str, Any] = caller.mine()
    if status:
        query["status"] = status.value
    if job_type:
        query["job_type"] = job_type
    docs = await pages.page(ctx.jobs, query, {"payload": 0, "history": 0, "outbox": 0,
                                              "result": 0},
                            _decode_cursor(cursor) if cursor else None, limit + 1,
                            newest_first=True)
    shown = docs[:limit]
    return JobPage(jobs=[from_doc(JobSummary, d) for d in shown],
                   next_cursor=_encode_cursor(shown[-1]) if len(docs) > limit else None)


@router.post("/jobs/{job_id}/cancel", response_model=SubmitResponse)
async def cancel_job(job_id: str, ctx: Context, caller: Writer, response: Response
                     ) -> SubmitResponse:
    """QUEUED or SCHEDULED: CANCELLED at once (200). PROCESSING: the running handler is
    cancelled and the job ends CANCELLED (202). Finished: 409."""
    # NOTE: a job's tenant never changes, so checking it once covers what follows.
    await load_job(ctx, caller, job_id, {"_id": 1})
    now = ctx.stores.clock.now()

    def plan(doc: transitions.Doc) -> transitions.Transition | None:
        if doc["status"] == JobStatus.PROCESSING:
            return None
        return transitions.cancel(doc, now)

    queue = ctx.stores.queue
    for _ in range(5):
        doc, t = await transitions.change(ctx.jobs, job_id, plan)
        if t is not None:
            break
        # NOTE: the stored flag is the request; the pub/sub message only makes it fast.
        # Workers also check the flag on every heartbeat and when they claim the job.
        flagged = await ctx.jobs.update_one(
            {"_id": job_id, "status": JobStatus.PROCESSING.value},
            {"$set": {"cancel_requested": True}})
        if flagged.matched_count:
            await _best_effort(queue.request_cancel(job_id))
            response.status_code = 202
            return SubmitResponse(job_id=job_id, status=JobStatus.PROCESSING)
        # the run ended in between: plan again from what the job is now
    else:
        raise Conflict("the job kept changing while this request ran; try again",
                       code="concurrent_change")
    # A QUEUED job may be held back by its type's cap: out of the delayed set and its
    # type's waiting line too, so that it does not hold a freed slot.
    tenant = doc.get("tenant", DEFAULT_TENANT)
    await _best_effort(queue.unschedule(job_id, doc["priority"], tenant))
    if t.expected_status is JobStatus.QUEUED:
        await _best_effort(leave_line(
            queue.redis, queue.keys.prefix, doc["job_type"],
            scheduled_member(job_id, doc["priority"], tenant)))
    await _best_effort(queue.publish([t.event.to_json()]))
    return SubmitResponse(job_id=job_id, status=JobStatus.CANCELLED)


async def _best_effort(redis_call: Awaitable[Any]) -> None:
    """A Redis step after MongoDB recorded the change: the change stands if it fails (a
    cancelled job's leftovers in Redis are dropped when read; events are in MongoDB)."""
    try:
        await redis_call
    except (RedisError, OSError) as exc:
        log.warning("api.redis_step_skipped", error=str(exc))


@router.post("/jobs/{job_id}/retry", status_code=202, response_model=SubmitResponse)
async def retry_job(job_id: str, ctx: Context, caller: Writer) -> SubmitResponse:
    """Run a FAILED or CANCELLED job again, with a fresh set of retries."""
    await load_job(ctx, caller, job_id, {"_id": 1})  # its tenant never changes
    now = ctx.stores.clock.now()

    def plan(doc: transitions.Doc) -> transitions.Transition:
        if doc["status"] not in RETRYABLE_BY_USER:
            raise Conflict(f"only FAILED or CANCELLED jobs can be retried; this one is "
                           f"{doc['status']}", code="illegal_transition",
                           details={"status": doc["status"]})
        pending = len(doc.get("outbox") or [])
        if pending >= RETRY_MAX_PENDING_EVENTS:
            raise Conflict(f"this job still owes its callback {pending} webhook events; "
                           "retry it once they are delivered or given up",
                           code="outbox_full", details={"pendingEvents": pending,
                                                        "max": RETRY_MAX_PENDING_EVENTS})
        return transitions.requeue(doc, now)

    doc, t = await transitions.change(ctx.jobs, job_id, plan)
    assert t is not None
    await ctx.stores.queue.enqueue(
        [Enqueue(job_id, Priority(doc["priority"]),
                 tenant=doc.get("tenant", DEFAULT_TENANT))], [t.event.to_json()])
    return SubmitResponse(job_id=job_id, status=JobStatus.QUEUED)


