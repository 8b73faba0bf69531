"""Random, unguessable identifiers (never counters: ids appear in URLs)."""

import uuid


def new_job_id() -> str:
    return f"job_{uuid.uuid4().hex}"


def new_event_id() -> str:
    return f"evt_{uuid.uuid4().hex}"


def new_delivery_id() -> str:
    return f"dlv_{uuid.uuid4().hex}"
