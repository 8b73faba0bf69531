"""The jobs resource: submit, status, list, cancel, retry."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response

from services.api.deps import Context
from services.api.schemas import (
    BatchSubmitRequest,
    BatchSubmitResponse,
    JobPage,
    JobPublic,
    JobStatusResponse,
    JobSummary,
    SubmitRequest,
    SubmitResponse,
    from_doc,
)
from services.api.submit import Accepted
from shared import transitions
from shared.errors import Conflict, InvalidInput, NotFound
from shared.queue import Enqueue
from shared.status import RETRYABLE_BY_USER, JobStatus, Priority

router = APIRouter(tags=["jobs"])
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=255)]


def _answer(accepted: Accepted, response: Response) -> SubmitResponse:
    response.status_code = 202 if accepted.created else 200
    return SubmitResponse(job_id=accepted.job_id, status=accepted.status)


@router.post("/submit-job", status_code=202, response_model=SubmitResponse)
@router.post("/jobs", status_code=202, response_model=SubmitResponse)
async def submit_job(body: SubmitRequest, ctx: Context, response: Response,
                     idempotency_key: IdempotencyKey = None) -> SubmitResponse:
    """Accept a job: 202 once it is stored; 200 with the original job when its
    idempotency key was seen before."""
    if idempotency_key and not body.idempotency_key:
        body.idempotency_key = idempotency_key
    accepted = await ctx.submitter.submit(await ctx.submitter.prepare(body))
    return _answer(accepted, response)


@router.post("/jobs/batch", status_code=202, response_model=BatchSubmitResponse)
async def submit_batch(body: BatchSubmitRequest, ctx: Context) -> BatchSubmitResponse:
    """Accept many jobs at once; nothing is stored unless every one is valid."""
    fields, problems = [], []
    for i, request in enumerate(body.jobs):
        try:
            fields.append(await ctx.submitter.prepare(request, where=("jobs", i)))
        except InvalidInput as exc:
            problems += exc.details
    if problems:
        raise InvalidInput("some jobs in the batch are invalid; none was stored",
                           details=problems)
    results = await asyncio.gather(*(ctx.submitter.submit(f) for f in fields),
                                   return_exceptions=True)
    jobs: list[SubmitResponse] = []
    for result in results:
        if isinstance(result, BaseException):
            raise result
        jobs.append(SubmitResponse(job_id=result.job_id, status=result.status))
    return BatchSubmitResponse(jobs=jobs)


async def _load(ctx: Context, job_id: str, projection: dict[str, Any] | None = None
                ) -> dict[str, Any]:
    doc: dict[str, Any] | None = await ctx.jobs.find_one({"_id": job_id}, projection)
    if doc is None:
        raise NotFound(f"no job {job_id!r}", details={"jobId": job_id})
    return doc


@router.get("/job-status/{job_id}", response_model=JobStatusResponse)
async def job_status(job_id: str, ctx: Context) -> Any:
    doc = await _load(ctx, job_id, {"payload": 0, "history": 0, "outbox": 0, "result": 0})
    return from_doc(JobStatusResponse, doc)


@router.get("/jobs/{job_id}", response_model=JobPublic)
async def get_job(job_id: str, ctx: Context) -> Any:
    return from_doc(JobPublic, await _load(ctx, job_id, {"outbox": 0}))


def _encode_cursor(doc: dict[str, Any]) -> str:
    raw = json.dumps([doc["created_at"].timestamp(), doc["_id"]]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        ts, job_id = json.loads(base64.urlsafe_b64decode(padded))
        return datetime.fromtimestamp(float(ts), UTC), str(job_id)
    except (ValueError, TypeError) as exc:
        raise InvalidInput("cursor is not one this API returned", details=[{
            "field": "cursor", "message": "invalid cursor", "type": "invalid_cursor"}]) from exc


@router.get("/jobs", response_model=JobPage)
async def list_jobs(ctx: Context, status: JobStatus | None = None,
                    job_type: Annotated[str | None, Query(alias="jobType")] = None,
                    limit: Annotated[int, Query(ge=1, le=500)] = 50,
                    cursor: str | None = None) -> JobPage:
    """Jobs newest first, filtered by status and/or jobType, a page at a time."""
    query: dict[str, Any] = {}
    if status:
        query["status"] = status.value
    if job_type:
        query["job_type"] = job_type
    if cursor:
        created, last_id = _decode_cursor(cursor)
        query["$or"] = [{"created_at": {"$lt": created}},
                        {"created_at": created, "_id": {"$lt": last_id}}]
    docs = await ctx.jobs.find(query, {"payload": 0, "history": 0, "outbox": 0,
                                       "result": 0}).sort(
        [("created_at", -1), ("_id", -1)]).limit(limit + 1).to_list()
    page = docs[:limit]
    return JobPage(jobs=[from_doc(JobSummary, d) for d in page],
                   next_cursor=_encode_cursor(page[-1]) if len(docs) > limit else None)


@router.post("/jobs/{job_id}/cancel", response_model=SubmitResponse)
async def cancel_job(job_id: str, ctx: Context, response: Response) -> SubmitResponse:
    """QUEUED or SCHEDULED: CANCELLED at once (200). PROCESSING: the running handler is
    cancelled and the job ends CANCELLED (202). Finished: 409."""
    now = ctx.stores.clock.now()

    def plan(doc: transitions.Doc) -> transitions.Transition | None:
        if doc["status"] == JobStatus.PROCESSING:
            return None
        return transitions.cancel(doc, now)

    doc, t = await transitions.change(ctx.jobs, job_id, plan)
    queue = ctx.stores.queue
    if t is None:
        await ctx.jobs.update_one({"_id": job_id, "status": JobStatus.PROCESSING.value},
                                  {"$set": {"cancel_requested": True}})
        await queue.request_cancel(job_id)
        response.status_code = 202
        return SubmitResponse(job_id=job_id, status=JobStatus.PROCESSING)
    if t.expected_status is JobStatus.SCHEDULED:
        await queue.unschedule(job_id, doc["priority"])
    await queue.publish([t.event.to_json()])
    return SubmitResponse(job_id=job_id, status=JobStatus.CANCELLED)


@router.post("/jobs/{job_id}/retry", status_code=202, response_model=SubmitResponse)
async def retry_job(job_id: str, ctx: Context) -> SubmitResponse:
    """Run a FAILED or CANCELLED job again, with a fresh set of retries."""
    now = ctx.stores.clock.now()

    def plan(doc: transitions.Doc) -> transitions.Transition:
        if doc["status"] not in RETRYABLE_BY_USER:
            raise Conflict(f"only FAILED or CANCELLED jobs can be retried; this one is "
                           f"{doc['status']}", code="illegal_transition",
                           details={"status": doc["status"]})
        return transitions.requeue(doc, now)

    doc, t = await transitions.change(ctx.jobs, job_id, plan)
    assert t is not None
    await ctx.stores.queue.enqueue([Enqueue(job_id, Priority(doc["priority"]))],
                                   [t.event.to_json()])
    return SubmitResponse(job_id=job_id, status=JobStatus.QUEUED)


