"""Status events: built by the transitions module, stored in the job's outbox, published
on the pub/sub channel (the doorbell), streamed over SSE and delivered as webhooks.

An event names its job, status, attempt and sequence number; its ``data`` is small
(``runAt``, an error's type and message, ``redelivered``), never the result. Only a
webhook of ``job.completed`` adds the result, when it is small (:func:`webhook_result`).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from shared.status import JobStatus


class Event(BaseModel):
    """One status change of one job. ``seq`` increases by one per event of a job."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    id: str
    type: str
    job_id: str
    status: JobStatus
    attempt: int
    seq: int
    at: datetime
    data: dict[str, Any] = Field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        """The JSON shape callers see (camelCase, ISO timestamps)."""
        return self.model_dump(mode="json", by_alias=True)

    def to_json(self) -> str:
        return json.dumps(self.to_wire(), separators=(",", ":"))


def event_type(status: JobStatus) -> str:
    return f"job.{status.value.lower()}"


def result_path(job_id: str) -> str:
    """Where the API serves a job with its result (relative to the API's base URL)."""
    return f"/jobs/{job_id}"


def webhook_result(job_id: str, result: Any, max_bytes: int) -> dict[str, Any]:
    """What a ``job.completed`` webhook adds to its data: ``result`` when its JSON is at
    most ``max_bytes``, else ``resultUrl`` (the API path to fetch the job and its result)
    and ``resultTruncated: true``."""
    try:
        size = len(json.dumps(result, separators=(",", ":"), ensure_ascii=False,
                              default=str).encode())
    except (TypeError, ValueError, RecursionError):
        size = max_bytes + 1
    if size <= max_bytes:
        return {"result": result}
    return {"resultUrl": result_path(job_id), "resultTruncated": True}
