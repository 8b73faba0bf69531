"""Every exception jobqueue raises on purpose, under one base class.

    JobQueueError
    ├── HandlerOutcome            raised by job handlers to steer retries
    │   ├── PermanentError        fail now, do not retry
    │   │   └── ResultTooLarge    the result is over JOBQUEUE_MAX_RESULT_BYTES or not storable
    │   └── Retry                 retry after a chosen delay
    ├── JobTimeout                a run exceeded its timeoutSeconds
    ├── ProcessDied               a pool child died while running a call (retryable)
    ├── RemoteError               a child's exception that could not come back as itself
    ├── InvalidSignature          a webhook's signature, timestamp or headers do not verify
    └── ApiError                  maps to an HTTP error response {"error": {code, message, details}}
        ├── InvalidInput          422, field-level details
        ├── Unauthorized          401 (no API key, or an unknown or revoked one)
        ├── Forbidden             403 (the key lacks the scope)
        ├── NotFound              404
        ├── Conflict              409 (illegal transition, idempotency key reused)
        ├── PayloadTooLarge       413
        ├── RateLimited           429 (over the key's submit rate), with Retry-After
        └── StoreUnavailable      503 (MongoDB or Redis unreachable)
"""

from __future__ import annotations

import math
from typing import Any


class JobQueueError(Exception):
    """Base class of every jobqueue error."""


class HandlerOutcome(JobQueueError):
    """Raised by a handler to say how its failure must be treated."""


class PermanentError(HandlerOutcome):
    """The job cannot succeed by trying again: it is FAILED at once."""


class ResultTooLarge(PermanentError):
    """A handler returned a result over ``JOBQUEUE_MAX_RESULT_BYTES`` (or one MongoDB
    cannot store): the job fails without retrying, since a rerun returns the same.
    Store big outputs as artifacts (``ctx.artifacts.save``) and return a reference."""


class Retry(HandlerOutcome):
    """Try again after ``delay`` seconds (still bounded by maxRetries)."""

    def __init__(self, message: str = "retry requested", *, delay: float | None = None):
        super().__init__(message)
        self.delay = delay


class JobTimeout(JobQueueError):
    """The handler ran longer than the job's timeoutSeconds and was cancelled."""


class ProcessDied(JobQueueError):
    """A child process of the worker's pool died while running a call (a crash, a
    segfault, ``os._exit``, the OOM killer). An ordinary failure: the job is retried."""


class RemoteError(JobQueueError):
    """An exception raised in a pool child that cannot be rebuilt in the worker (it does
    not pickle): its type name and message, with the child's traceback as the cause."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name


class InvalidSignature(JobQueueError):
    """A webhook delivery failed verification: missing headers, a stale or future
    timestamp, or no signature made with the receiver's secret."""


class ApiError(JobQueueError):
    """An error with an HTTP status, a stable code, a message and optional details."""

    status_code = 400
    code = "bad_request"
    headers: dict[str, str] | None = None
    """Extra response headers (``Retry-After``, ``WWW-Authenticate``)."""

    def __init__(self, message: str, *, details: Any = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.details = details
        if code:
            self.code = code


class InvalidInput(ApiError):
    """The request is well-formed JSON but a field is wrong."""

    status_code = 422
    code = "invalid_input"


class Unauthorized(ApiError):
    """No API key, or one that is unknown or revoked."""

    status_code = 401
    code = "unauthorized"

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message, details=details)
        self.headers = {"WWW-Authenticate": "Bearer"}  # RFC 6750


class Forbidden(ApiError):
    """The API key is valid but lacks the scope this request needs."""

    status_code = 403
    code = "forbidden"


class NotFound(ApiError):
    """No such job (or artifact, or delivery)."""

    status_code = 404
    code = "not_found"


class Conflict(ApiError):
    """The request contradicts the job's current state or an earlier request."""

    status_code = 409
    code = "conflict"


class PayloadTooLarge(ApiError):
    """The request body exceeds JOBQUEUE_MAX_BODY_BYTES."""

    status_code = 413
    code = "payload_too_large"


class RateLimited(ApiError):
    """Over the API key's submit rate: try again after ``retry_after`` seconds."""

    status_code = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: float, details: Any = None) -> None:
        super().__init__(message, details=details)
        # NOTE: Retry-After is whole seconds; rounding down would invite an early retry.
        self.headers = {"Retry-After": str(max(1, math.ceil(retry_after)))}


class StoreUnavailable(ApiError):
    """MongoDB or Redis did not answer in time; nothing was stored."""

    status_code = 503
    code = "store_unavailable"
