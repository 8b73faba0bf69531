"""Webhook deliveries of a job: the attempt log, and sending an event again."""

from __future__ import annotations

from fastapi import APIRouter

from services.api.deps import Context, Reader, Writer
from services.api.routes.jobs import load_job
from services.api.schemas import DeliveryLog, DeliveryPublic, error_responses
from shared.errors import Conflict, NotFound
from shared.events import Event
from shared.transitions import outbox_entry

router = APIRouter(tags=["webhooks"],
                   responses=error_responses(401, 403, 404, 409, 422, 503))


@router.get("/jobs/{job_id}/deliveries", response_model=DeliveryLog)
async def list_deliveries(job_id: str, ctx: Context, caller: Reader) -> DeliveryLog:
    """Every attempt to deliver this job's events, oldest first."""
    job = await load_job(ctx, caller, job_id, {"outbox": 1, "callback_gone": 1})
    rows = await ctx.stores.deliveries.find({"job_id": job_id}).sort("at", 1).to_list()
    return DeliveryLog(job_id=job_id, pending_events=len(job.get("outbox", [])),
                       callback_gone=bool(job.get("callback_gone")),
                       deliveries=[DeliveryPublic.model_validate(r) for r in rows])


@router.post("/jobs/{job_id}/deliveries/{event_id}/redeliver", status_code=202)
async def redeliver(job_id: str, event_id: str, ctx: Context, caller: Writer
                    ) -> dict[str, str]:
    """Send an event again now (same webhook-id, fresh attempts), ahead of the events
    waiting in the job's outbox; this also re-enables a callback that answered 410 Gone.

    An event already waiting is not added again (``status: already_queued``): it is made
    due now, and sent once the events ahead of it are. A job past its retention is not
    kept alive by its events (409 ``expired``)."""
    job = await load_job(ctx, caller, job_id, {"expires_at": 1})  # its tenant never changes
    now = ctx.stores.clock.now()
    if job.get("expires_at") is not None and job["expires_at"] <= now:
        raise Conflict(f"job {job_id!r} is past its retention and about to be deleted; "
                       "its events are not sent again", code="expired",
                       details={"jobId": job_id, "expiresAt": job["expires_at"].isoformat()})
    record = await ctx.stores.deliveries.find_one({"job_id": job_id, "event_id": event_id})
    if record is None:
        raise NotFound(f"no delivery of event {event_id!r} for job {job_id!r}",
                       details={"jobId": job_id, "eventId": event_id})
    event = Event.model_validate(record["event"])
    entry = {**outbox_entry(event), "next_at": now}
    # NOTE: one conditional update: an event is in the outbox at most once, however
    # often it is asked for. It goes first: the notifier sends the outbox's head, and a
    # failing event ahead of it would hold it back for that event's whole backoff.
    added = await ctx.jobs.update_one({"_id": job_id, "outbox.id": {"$ne": event_id}}, {
        "$push": {"outbox": {"$each": [entry], "$position": 0}},
        "$set": {"callback_gone": False}, "$min": {"outbox_due_at": now}})
    status = "queued"
    if not added.matched_count:
        status = "already_queued"
        await ctx.jobs.update_one({"_id": job_id, "outbox.id": event_id}, {
            "$set": {"outbox.$.next_at": now, "callback_gone": False},
            "$min": {"outbox_due_at": now}})
    await ctx.stores.queue.publish([event.to_json()])
    return {"jobId": job_id, "eventId": event_id, "status": status}
