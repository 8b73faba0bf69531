"""Status events: built by the transitions module, stored in the job's outbox, published
on the pub/sub channel (the doorbell), streamed over SSE and delivered as webhooks."""

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
