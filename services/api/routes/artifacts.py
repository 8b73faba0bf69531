"""Files jobs produce, and deleting a finished job with everything it left."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Response
from fastapi.responses import StreamingResponse

from services.api.deps import Context, Reader, Writer
from services.api.routes.jobs import load_job
from services.api.schemas import error_responses
from shared.errors import Conflict, NotFound
from shared.status import TERMINAL

router = APIRouter(tags=["jobs"], responses=error_responses(401, 403, 404, 409, 422, 503))


@router.get("/jobs/{job_id}/artifacts/{name}")
async def download_artifact(job_id: str, name: str, ctx: Context, caller: Reader
                            ) -> StreamingResponse:
    """Stream an artifact the job listed, with its content type and length."""
    job = await load_job(ctx, caller, job_id, {"artifacts": 1})
    listed = {a["name"]: a for a in job.get("artifacts", [])}
    grid_out = await ctx.stores.artifacts.open(job_id, name) if name in listed else None
    if grid_out is None:
        raise NotFound(f"job {job_id!r} has no artifact {name!r}",
                       details={"jobId": job_id, "artifacts": sorted(listed)})

    async def chunks() -> AsyncIterator[bytes]:
        while chunk := await grid_out.readchunk():
            yield chunk

    return StreamingResponse(chunks(), media_type=listed[name]["content_type"], headers={
        "Content-Length": str(grid_out.length),
        "Content-Disposition": f'attachment; filename="{name}"'})


@router.delete("/jobs/{job_id}", status_code=204)
async def delete_job(job_id: str, ctx: Context, caller: Writer) -> Response:
    """Delete a finished job, its artifacts and its delivery log (409 while active)."""
    job = await load_job(ctx, caller, job_id, {"status": 1})
    if job["status"] not in TERMINAL:
        raise Conflict(f"a {job['status']} job cannot be deleted; cancel it first",
                       code="illegal_transition", details={"status": job["status"]})
    finished = {"_id": job_id, "status": {"$in": list(TERMINAL)}}
    # NOTE: expired first, then its children, the job last: a delete that dies half-way
    # leaves an expired job whose leftovers the retention sweep removes with it.
    marked = await ctx.jobs.update_one(finished, {"$set": {
        "expires_at": ctx.stores.clock.now()}})
    if not marked.matched_count:
        raise Conflict("the job changed while being deleted; try again",
                       code="concurrent_change")
    await ctx.stores.artifacts.delete_for_jobs([job_id])
    await ctx.stores.deliveries.delete_many({"job_id": job_id})
    await ctx.jobs.delete_one(finished)
    return Response(status_code=204)
