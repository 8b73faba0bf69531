"""Request and response shapes of the HTTP API (camelCase), separate from the stored
document (snake_case, shared.models)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from shared.events import event_type
from shared.models import Artifact, ErrorInfo, HistoryEntry
from shared.status import JobStatus, Priority
from shared.tenants import DEFAULT_TENANT

CallbackEvent = StrEnum(  # type: ignore[misc]
    "CallbackEvent", {event_type(s): event_type(s) for s in JobStatus})
"""The event types a callback can ask for: one per status (``job.completed``, ...)."""
MAX_UTC_OFFSET = timedelta(hours=18)
"""The widest UTC offset ISO 8601 / RFC 3339 readers (and BSON round trips) agree on."""
MIN_RETENTION_SECONDS, MAX_RETENTION_SECONDS = 60, 365 * 86400
"""Bounds of a submit's ``retentionSeconds`` (how long the finished job is kept)."""
IDEMPOTENCY_KEY = r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]+$"
"""No control characters (C0, C1) or line separators: the key also travels as an HTTP
header."""


class Camel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class ErrorInfoBody(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorBody(BaseModel):
    """Every error answer: ``{"error": {"code", "message", "details"}}``."""

    error: ErrorInfoBody


ERROR_MEANINGS = {
    400: "The body is not valid JSON.",
    401: "No API key, or an unknown or revoked one (`Authorization: Bearer <key>`).",
    403: "The API key lacks the scope this needs; or, while no key exists, the client is "
         "not on this machine (`protected_mode`).",
    404: "No such job (or artifact, or event).",
    409: "Illegal for the job's status, or an idempotency key reused for another request.",
    413: "The body is over JOBQUEUE_MAX_BODY_BYTES.",
    422: "A field is invalid; details name each one.",
    429: "Over the API key's submit rate (`rate_limited`); Retry-After says when to retry.",
    503: "MongoDB or Redis is unreachable; nothing was changed.",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` entries of these error statuses."""
    return {status: {"model": ErrorBody, "description": ERROR_MEANINGS[status]}
            for status in statuses}


class SubmitRequest(Camel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    job_type: str = Field(min_length=1, max_length=100)
    payload: dict[str, Any] = Field(default_factory=dict)
    callback_url: str | None = Field(None, max_length=2048)
    callback_events: list[CallbackEvent] | None = Field(
        None, max_length=len(CallbackEvent), json_schema_extra={"uniqueItems": True})
    max_retries: int | None = Field(None, ge=0, le=100)
    priority: Priority = Priority.DEFAULT
    delay_seconds: float | None = Field(None, ge=0, le=366 * 86400)
    run_at: datetime | None = None
    timeout_seconds: float | None = Field(None, gt=0, le=7 * 86400)
    idempotency_key: str | None = Field(None, min_length=1, max_length=255,
                                        pattern=IDEMPOTENCY_KEY)
    retention_seconds: float | None = Field(None, ge=MIN_RETENTION_SECONDS,
                                            le=MAX_RETENTION_SECONDS)

    @field_validator("callback_events")
    @classmethod
    def _unique(cls, events: list[CallbackEvent] | None) -> list[CallbackEvent] | None:
        if events is not None and len(set(events)) != len(events):
            raise ValueError("each event type at most once")
        return events

    @field_validator("run_at")
    @classmethod
    def _storable_moment(cls, run_at: datetime | None) -> datetime | None:
        """A time MongoDB can hold: offset within +-18h, and still a date once in UTC
        (``0001-01-01T00:00:00+05:00`` is not). Naive times are UTC."""
        if run_at is None:
            return None
        offset = run_at.utcoffset()
        if offset is None:
            return run_at.replace(tzinfo=UTC)
        if abs(offset) > MAX_UTC_OFFSET:
            raise ValueError("the UTC offset must be within -18:00 and +18:00")
        try:
            return run_at.astimezone(UTC)
        except OverflowError:
            raise ValueError("out of range once converted to UTC") from None

    @model_validator(mode="after")
    def _one_delay(self) -> SubmitRequest:
        if self.delay_seconds is not None and self.run_at is not None:
            raise ValueError("give delaySeconds or runAt, not both")
        return self


class BatchSubmitRequest(Camel):
    jobs: list[SubmitRequest] = Field(min_length=1, max_length=1000)


class SubmitResponse(Camel):
    job_id: str
    status: JobStatus


class BatchSubmitResponse(Camel):
    jobs: list[SubmitResponse]


class JobStatusResponse(Camel):
    """The seed's status shape (jobId, status, retries, createdAt, updatedAt) plus more."""

    job_id: str
    status: JobStatus
    retries: int
    created_at: datetime
    updated_at: datetime
    job_type: str
    attempt: int
    max_retries: int
    run_at: datetime | None = None
    error: ErrorInfo | None = None
    expires_at: datetime | None = None


class JobSummary(Camel):
    job_id: str
    tenant: str = DEFAULT_TENANT
    job_type: str
    status: JobStatus
    priority: Priority
    retries: int
    created_at: datetime
    updated_at: datetime


class JobPublic(Camel):
    job_id: str
    tenant: str = DEFAULT_TENANT
    job_type: str
    payload: dict[str, Any]
    status: JobStatus
    priority: Priority
    retries: int
    max_retries: int
    attempt: int
    run_at: datetime | None = None
    timeout_seconds: float
    callback_url: str | None = None
    callback_events: list[str] | None = None
    idempotency_key: str | None = None
    result: Any = None
    error: ErrorInfo | None = None
    history: list[HistoryEntry]
    """The first event, then the last ones kept (``historyDropped`` left out between)."""
    history_dropped: int = 0
    artifacts: list[Artifact] = Field(default_factory=list)
    cancel_requested: bool = False
    worker_id: str | None = None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    expires_at: datetime | None = None

    @model_validator(mode="before")
    @classmethod
    def _whole_history(cls, doc: Any) -> Any:
        """From the stored job: its first event before the last ones kept, and how many
        events between them are no longer kept."""
        if not isinstance(doc, dict) or "seq" not in doc:
            return doc
        history = doc.get("history") or []
        first = doc.get("history_first")
        if first is None or doc["seq"] <= len(history):
            return doc
        return {**doc, "history": [first, *history],
                "history_dropped": doc["seq"] - len(history) - 1}


class JobPage(Camel):
    jobs: list[JobSummary]
    next_cursor: str | None = None


class DeliveryPublic(Camel):
    event_id: str
    event_type: str
    url: str
    attempt: int
    outcome: str
    status_code: int | None = None
    latency_ms: float | None = None
    error: str | None = None
    response_snippet: str | None = None
    next_attempt_at: datetime | None = None
    at: datetime


class DeliveryLog(Camel):
    job_id: str
    pending_events: int
    callback_gone: bool
    deliveries: list[DeliveryPublic]


def from_doc(model: type[Camel], doc: dict[str, Any]) -> Any:
    """Build a response model from a stored document."""
    return model.model_validate({**doc, "job_id": doc["_id"]})
