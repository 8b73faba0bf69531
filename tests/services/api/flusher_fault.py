"""Fault injection for a real ``jobqueue api`` process (named in
JOBQUEUE_HANDLER_MODULES): submitting a ``breakFlusher`` job makes the group commit's
flusher die of a bug, so the test can watch the process answer and stop."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from services.api.submit import Submitter
from shared.jobtypes import JobContext, job_type


class Nothing(BaseModel):
    pass


@job_type("breakFlusher", payload=Nothing)
async def break_flusher(payload: Nothing, ctx: JobContext) -> None:
    return None


_flush = Submitter._flush


async def _buggy_flush(self: Submitter, batch: Any) -> None:
    if any(fields["job_type"] == "breakFlusher" for fields, _ in batch):
        raise RuntimeError("injected flusher bug")
    await _flush(self, batch)


Submitter._flush = _buggy_flush  # type: ignore[method-assign]
