"""What a worker does with a stream entry it read: a pure decision over the job document.

The same question is asked after a lost reply: a claim that MongoDB applied but whose
answer never came back leaves the job PROCESSING with ``claim`` naming this very entry,
so the retried read finds it "ours" and runs it instead of treating it as another
worker's.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from shared.queue import Delivery
from shared.status import JobStatus


class Verdict(StrEnum):
    CLAIM = "claim"
    """QUEUED: start a run."""
    TAKEOVER = "takeover"
    """PROCESSING by a run that died; this entry was re-added in its place (prev = claim)."""
    OURS = "ours"
    """PROCESSING, claimed by this very entry: our claim applied but its reply was lost."""
    CANCEL = "cancel"
    """A cancel was requested while the job was not running here: end it CANCELLED."""
    SKIP = "skip"
    """Finished, cancelled, gone, or owned by another entry: acknowledge, run nothing."""


def judge(doc: dict[str, Any] | None, entry: Delivery, running_here: bool) -> Verdict:
    """Decide what ``entry`` means for its job, as stored now."""
    if doc is None or running_here:
        return Verdict.SKIP
    status = JobStatus(doc["status"])
    claim = doc.get("claim")
    if status is JobStatus.PROCESSING and claim == entry.entry_id:
        # NOTE: checked before the cancel flag: the run is ours and already started in
        # MongoDB's eyes; the heartbeat's cancel check stops it if it must.
        return Verdict.OURS
    movable = status is JobStatus.QUEUED or (
        status is JobStatus.PROCESSING and entry.prev is not None and claim == entry.prev)
    if not movable:
        return Verdict.SKIP
    if doc.get("cancel_requested"):
        return Verdict.CANCEL
    return Verdict.CLAIM if status is JobStatus.QUEUED else Verdict.TAKEOVER
