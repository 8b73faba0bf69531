"""The job document (``jobs`` collection) and the shapes stored inside it.

Stored field names are snake_case; the API presents them in camelCase. Hot paths read
and write through the raw PyMongo collection (``Job.get_pymongo_collection()``) with
the field names below; Beanie owns the schema and the indexes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

import pymongo
from beanie import Document
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from pymongo import IndexModel

from shared.ids import new_delivery_id, new_job_id
from shared.status import JobStatus, Priority
from shared.tenants import DEFAULT_TENANT

DELIVERY_LOG_MAX_AGE_SECONDS = 800 * 86400
"""Older than any job can be: scheduled at most 366 days ahead, kept at most 365 days
once finished (plus the webhook retry schedule)."""


class Stored(BaseModel):
    """Shapes embedded in the job: stored snake_case, shown camelCase by the API."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class ErrorInfo(Stored):
    type: str
    message: str
    traceback: str | None = None


class HistoryEntry(Stored):
    status: JobStatus
    at: datetime
    attempt: int
    event_id: str
    worker_id: str | None = None
    error: ErrorInfo | None = None


class Artifact(Stored):
    name: str
    content_type: str
    size: int


class Job(Document):
    id: str = Field(default_factory=new_job_id)  # type: ignore[assignment]
    tenant: str = DEFAULT_TENANT
    """The tenant of the API key that submitted the job (see shared.tenants)."""
    job_type: str
    payload: dict[str, Any]
    status: JobStatus
    priority: Priority = Priority.DEFAULT
    retries: int = 0
    max_retries: int
    attempt: int = 0
    """Runs started so far; also the fence a worker's writes are checked against."""
    seq: int = 0
    """Events so far; every transition filters on it (optimistic concurrency)."""
    run_at: datetime | None = None
    timeout_seconds: float
    callback_url: str | None = None
    callback_events: list[str] | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None
    result: Any = None
    error: ErrorInfo | None = None
    history: list[HistoryEntry] = Field(default_factory=list)
    """The last ``history_limit`` events (contiguous: entry i is event seq-len+1+i)."""
    history_first: HistoryEntry | None = None
    """The job's first event, kept when the history no longer holds it."""
    history_limit: int | None = None
    """History entries kept (JOBQUEUE_HISTORY_LIMIT when the job was submitted)."""
    retention_seconds: float | None = None
    """How long the job is kept once finished (submit's retentionSeconds or the setting)."""
    expires_at: datetime | None = None
    """Set when the job finishes: the scheduler then deletes it with its artifacts and
    delivery log (see services.scheduler.retention); unset again by a manual retry."""
    outbox: list[dict[str, Any]] = Field(default_factory=list)
    """Events not yet delivered to callback_url, oldest first (see webhooks.outbox)."""
    outbox_due_at: datetime | None = None
    """When the notifier should next look at the outbox; unset when it is empty."""
    outbox_lease_until: datetime | None = None
    """A notifier delivering this job's events holds the outbox until then."""
    outbox_lease_owner: str | None = None
    """The holder's random token; every write under the lease filters on it."""
    callback_gone: bool = False
    """The callback answered 410 Gone: nothing more is sent to it."""
    claim: str | None = None
    """Stream entry id of the run that owns the job while it is PROCESSING."""
    cancel_requested: bool = False
    artifacts: list[Artifact] = Field(default_factory=list)
    worker_id: str | None = None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None

    class Settings:
        name = "jobs"
        use_revision = False
        indexes: ClassVar[list[IndexModel]] = [
            # Idempotency keys are per tenant. NOTE: partial, not sparse: a sparse
            # compound index still holds every job (each has a tenant), and all jobs
            # without a key would collide on (tenant, null).
            IndexModel([("tenant", pymongo.ASCENDING), ("idempotency_key", pymongo.ASCENDING)],
                       unique=True, name="tenant_idempotency_key_unique",
                       partialFilterExpression={"idempotency_key": {"$type": "string"}}),
            # GET /jobs, newest first, optionally by status and/or type: one tenant's
            # (status and type are then filtered along its own jobs) ...
            IndexModel([("tenant", pymongo.ASCENDING), ("created_at", pymongo.DESCENDING),
                        ("_id", pymongo.DESCENDING)], name="tenant_created"),
            # ... or every tenant's (an admin key).
            IndexModel([("created_at", pymongo.DESCENDING), ("_id", pymongo.DESCENDING)],
                       name="created"),
            # Also the reconciler's: the jobs in one active status, oldest first.
            # NOTE: every index costs each write; this one serves both.
            IndexModel([("status", pymongo.ASCENDING), ("created_at", pymongo.DESCENDING),
                        ("_id", pymongo.DESCENDING)], name="status_created"),
            IndexModel([("job_type", pymongo.ASCENDING), ("created_at", pymongo.DESCENDING),
                        ("_id", pymongo.DESCENDING)], name="type_created"),
            # The notifier's sweep: jobs whose outbox is due.
            IndexModel([("outbox_due_at", pymongo.ASCENDING)], sparse=True,
                       name="outbox_due"),
            # The retention sweep: finished jobs, soonest to expire first. Not a TTL
            # index: a job's artifacts and deliveries must go with it.
            IndexModel([("expires_at", pymongo.ASCENDING)], sparse=True, name="expires"),
        ]


class WebhookDelivery(Document):
    """One attempt to deliver one event to a job's callback URL."""

    id: str = Field(default_factory=new_delivery_id)  # type: ignore[assignment]
    job_id: str
    event_id: str
    event_type: str
    url: str
    attempt: int
    outcome: str
    """delivered | retrying | failed (no attempts left) | gone (410) | redelivery"""
    status_code: int | None = None
    latency_ms: float | None = None
    error: str | None = None
    response_snippet: str | None = None
    next_attempt_at: datetime | None = None
    event: dict[str, Any]
    at: datetime

    class Settings:
        name = "webhook_deliveries"
        use_revision = False
        indexes: ClassVar[list[IndexModel]] = [
            IndexModel([("job_id", pymongo.ASCENDING), ("at", pymongo.ASCENDING)],
                       name="job_at"),
            # A backstop only: records go with their job (the retention sweep); this
            # removes any left behind once no job can still be alive.
            IndexModel([("at", pymongo.ASCENDING)], name="at_ttl",
                       expireAfterSeconds=DELIVERY_LOG_MAX_AGE_SECONDS),
        ]


class ApiKey(Document):
    """An API key (``api_keys`` collection). Only the SHA-256 of its secret is stored;
    see shared.apikeys. Keys are revoked, never deleted."""

    id: str  # type: ignore[assignment]
    key_hash: str
    prefix: str
    """The first characters of the key, enough to recognise it in a list (not secret)."""
    tenant: str
    scopes: list[str]
    submit_rate: str | None = None
    """This key's submit rate (``100/s``), instead of JOBQUEUE_SUBMIT_RATE_LIMIT."""
    created_at: datetime
    revoked_at: datetime | None = None

    class Settings:
        name = "api_keys"
        use_revision = False
        indexes: ClassVar[list[IndexModel]] = [
            IndexModel([("key_hash", pymongo.ASCENDING)], unique=True, name="key_hash_unique"),
        ]
