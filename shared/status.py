"""Job statuses and the named sets the services reason with."""

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "QUEUED"
    SCHEDULED = "SCHEDULED"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


ACTIVE = frozenset({JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.PROCESSING})
TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})
RETRYABLE_BY_USER = frozenset({JobStatus.FAILED, JobStatus.CANCELLED})


class Priority(StrEnum):
    HIGH = "high"
    DEFAULT = "default"
    LOW = "low"


PRIORITIES_IN_READ_ORDER = (Priority.HIGH, Priority.DEFAULT, Priority.LOW)
