"""``echo``: the smallest job type, and the one to copy when adding your own."""

from __future__ import annotations

from pydantic import BaseModel, Field

from shared.jobtypes import JobContext, job_type


class Echo(BaseModel):
    text: str = Field(max_length=10_000)


@job_type("echo", payload=Echo)
async def echo(payload: Echo, ctx: JobContext) -> dict[str, object]:
    ctx.log.info("echo", length=len(payload.text))
    return {"text": payload.text, "attempt": ctx.attempt}
