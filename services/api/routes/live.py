"""Live status: a Server-Sent-Events stream of one job's events.

Streams are fed by the process's one subscriber (services.api.watchers); a stream that
missed events (a dropped doorbell message, an overflowing buffer, a resubscription)
rebuilds them from the job's history in MongoDB, so none is skipped.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from services.api.deps import ApiContext, Context, Reader
from services.api.errors import error_response
from services.api.schemas import error_responses
from services.api.watchers import Watch, Watchers
from shared.errors import NotFound
from shared.events import event_type
from shared.status import TERMINAL, JobStatus

router = APIRouter(tags=["jobs"], responses=error_responses(401, 403, 404, 429, 503))
RETRY_AFTER_SECONDS = 5
STATUS_FIELDS = {"status": 1, "seq": 1, "attempt": 1, "updated_at": 1}


def sse(event: str, data: dict[str, Any], event_id: str | None = None) -> str:
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, default=str)}\n\n"


def from_history(job_id: str, entry: dict[str, Any], seq: int) -> dict[str, Any]:
    """An event rebuilt from the job's history (for a doorbell message that was lost)."""
    status = JobStatus(entry["status"])
    return {"id": entry["event_id"], "type": event_type(status), "jobId": job_id,
            "status": status.value, "attempt": entry["attempt"], "seq": seq,
            "at": entry["at"].isoformat(), "data": {}}


class EventStream(StreamingResponse):
    """An SSE response that releases its watcher however the stream ends: finished,
    client gone, or never started at all (a generator's ``finally`` would not run then)."""

    def __init__(self, content: AsyncIterator[str], watchers: Watchers, watch: Watch):
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._watchers = watchers
        self._watch = watch

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._watchers.release(self._watch)


@router.get("/jobs/{job_id}/events")
async def job_events(job_id: str, ctx: Context, caller: Reader) -> Response:
    """The job's current status first (event ``status``), then each transition as it
    happens (event ``job.<status>``); the stream ends after a terminal status."""
    watchers = ctx.watchers
    # NOTE: a tenant's own streams are checked first: one that used up its share is
    # told so (429), whatever room the process has left for the others.
    if watchers.tenant_full(caller.tenant):
        return tenant_watchers_full(caller.tenant, watchers.max_per_tenant)
    watch = watchers.watch(job_id, caller.tenant)
    if watch is None:
        return too_many_watchers(watchers.max_watchers)
    doc = None
    try:
        # NOTE: watch first, then read the status, so no event falls between the two.
        async with watchers.mongo_reads:
            doc = await ctx.jobs.find_one({"_id": job_id, **caller.mine()}, STATUS_FIELDS)
    finally:
        if doc is None:
            watchers.release(watch)
    if doc is None:
        raise NotFound(f"no job {job_id!r}", details={"jobId": job_id})
    return EventStream(_events(ctx, watch, doc), watchers, watch)


def too_many_watchers(limit: int) -> Response:
    response = error_response(
        503, "too_many_watchers",
        f"this API process already streams to {limit} watchers; try again shortly",
        {"maxWatchers": limit})
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def tenant_watchers_full(tenant: str, limit: int) -> Response:
    response = error_response(
        429, "too_many_tenant_watchers",
        f"tenant {tenant!r} already has {limit} live-status streams open on this API "
        "process; close one, or try again shortly", {"tenant": tenant,
                                                     "maxWatchersPerTenant": limit})
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


async def _events(ctx: ApiContext, watch: Watch, doc: dict[str, Any]) -> AsyncIterator[str]:
    job_id, last = watch.job_id, doc["seq"]
    yield sse("status", {"jobId": job_id, "status": doc["status"], "seq": last,
                         "attempt": doc["attempt"], "at": doc["updated_at"].isoformat()})
    if doc["status"] in TERMINAL:
        return
    while True:
        try:
            async with asyncio.timeout(ctx.settings.sse_keepalive_seconds):
                batch = await watch.take()
        except TimeoutError:
            yield ": keep-alive\n\n"
            continue
        events = batch.events
        if batch.lost:  # some were dropped: everything since `last` is in the history
            events = [*await _history(ctx, job_id, last), *events]
        for event in events:
            if event["seq"] <= last:
                continue
            if event["seq"] > last + 1:  # the doorbell dropped some: read the history
                events_between = await _history(ctx, job_id, last, until=event["seq"] - 1)
                for missed in events_between:
                    yield sse(missed["type"], missed, missed["id"])
            last = event["seq"]
            yield sse(event["type"], event, event.get("id"))
            if event["status"] in TERMINAL:
                return


async def _history(ctx: ApiContext, job_id: str, after: int, until: int | None = None
                   ) -> list[dict[str, Any]]:
    """The job's events with ``after < seq <= until`` (or up to its latest), rebuilt from
    its history; the entries hold the job's last ``len(history)`` events."""
    async with ctx.watchers.mongo_reads:
        doc = await ctx.jobs.find_one({"_id": job_id}, {"seq": 1, "history": 1})
    if doc is None:  # deleted while watched: nothing more will happen to it
        return []
    history = doc.get("history", [])
    first = doc["seq"] - len(history) + 1
    until = doc["seq"] if until is None else min(until, doc["seq"])
    return [from_history(job_id, history[seq - first], seq)
            for seq in range(max(after + 1, first), until + 1)]
