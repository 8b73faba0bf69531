"""Live status: a Server-Sent-Events stream of one job's events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from services.api.deps import Context
from shared.errors import NotFound
from shared.events import event_type
from shared.status import TERMINAL, JobStatus

router = APIRouter(tags=["jobs"])
KEEPALIVE_SECONDS = 15.0


def sse(event: str, data: dict[str, Any], event_id: str | None = None) -> str:
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, default=str)}\n\n"


def from_history(job_id: str, entry: dict[str, Any], seq: int) -> dict[str, Any]:
    """An event rebuilt from the job's history (for a doorbell message that was lost)."""
    status = JobStatus(entry["status"])
    return {"id": entry["event_id"], "type": event_type(status), "jobId": job_id,
            "status": status.value, "attempt": entry["attempt"], "seq": seq,
            "at": entry["at"].isoformat(), "data": {}}


@router.get("/jobs/{job_id}/events")
async def job_events(job_id: str, ctx: Context) -> StreamingResponse:
    """The job's current status first (event ``status``), then each transition as it
    happens (event ``job.<status>``); the stream ends after a terminal status."""
    redis, jobs = ctx.stores.redis, ctx.jobs
    if await jobs.count_documents({"_id": job_id}, limit=1) == 0:
        raise NotFound(f"no job {job_id!r}", details={"jobId": job_id})
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    # NOTE: subscribe before reading the status, so no event falls between the two.
    await pubsub.subscribe(ctx.stores.queue.keys.events_channel)

    async def stream() -> AsyncIterator[str]:
        try:
            doc = await jobs.find_one({"_id": job_id}, {"status": 1, "seq": 1, "attempt": 1,
                                                        "updated_at": 1})
            if doc is None:
                return
            last = doc["seq"]
            yield sse("status", {"jobId": job_id, "status": doc["status"], "seq": last,
                                 "attempt": doc["attempt"],
                                 "at": doc["updated_at"].isoformat()})
            if doc["status"] in TERMINAL:
                return
            while True:
                message = await pubsub.get_message(timeout=KEEPALIVE_SECONDS)
                if message is None:
                    yield ": keep-alive\n\n"
                    continue
                event = json.loads(message["data"])
                if event.get("jobId") != job_id or event["seq"] <= last:
                    continue
                if event["seq"] > last + 1:  # the doorbell dropped some: read history
                    full = await jobs.find_one({"_id": job_id}, {"history": 1})
                    for seq in range(last + 1, event["seq"]):
                        missed = from_history(job_id, full["history"][seq - 1], seq)
                        yield sse(missed["type"], missed, missed["id"])
                last = event["seq"]
                yield sse(event["type"], event, event["id"])
                if event["status"] in TERMINAL:
                    return
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
