"""Every Redis key and channel name, in one place.

Queue keys share the hash tag ``{queue}`` so that one queue lives on one Redis Cluster
slot and its Lua scripts may touch all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.status import PRIORITIES_IN_READ_ORDER, Priority
from shared.tenants import DEFAULT_TENANT

CONSUMER_GROUP = "workers"
RECLAIMER = "reclaimer"


@dataclass(frozen=True)
class Lane:
    """Where a ready job waits: one stream per (priority, tenant)."""

    priority: Priority
    tenant: str = DEFAULT_TENANT


@dataclass(frozen=True)
class Keys:
    prefix: str = "jq"
    queue: str = "default"

    @property
    def _stream_prefix(self) -> str:
        return f"{self.prefix}:{{{self.queue}}}:stream:"

    def stream(self, priority: Priority | str, tenant: str = DEFAULT_TENANT) -> str:
        """The stream of one lane. The default tenant's lane keeps the name the single
        per-priority stream had, so entries written before lanes existed are still read."""
        base = f"{self._stream_prefix}{Priority(priority).value}"
        return base if tenant == DEFAULT_TENANT else f"{base}:{tenant}"

    def lane_stream(self, lane: Lane) -> str:
        return self.stream(lane.priority, lane.tenant)

    def lane_of(self, stream: str) -> Lane:
        """The lane whose stream this is (inverse of :meth:`stream`)."""
        if not stream.startswith(self._stream_prefix):
            raise ValueError(f"not a stream of this queue: {stream!r}")
        priority, _, tenant = stream[len(self._stream_prefix):].partition(":")
        return Lane(Priority(priority), tenant or DEFAULT_TENANT)

    def streams(self) -> list[str]:
        """The default tenant's lanes in read order: high first."""
        return [self.stream(p) for p in PRIORITIES_IN_READ_ORDER]

    def ready(self, priority: Priority | str) -> str:
        """Sorted set (all scores 0, so ordered by name) of the lane streams of one
        priority that may have unread entries; readers go round it, one entry per lane
        per turn."""
        return f"{self.prefix}:{{{self.queue}}}:ready:{Priority(priority).value}"

    def rotation(self, priority: Priority | str) -> str:
        """The lane stream of one priority that was read last (where the round goes on)."""
        return f"{self.prefix}:{{{self.queue}}}:rotation:{Priority(priority).value}"

    @property
    def lanes(self) -> str:
        """Set of every lane stream ever created (with its consumer group), for the
        reclaimer, which must scan the pending entries of each."""
        return f"{self.prefix}:{{{self.queue}}}:lanes"

    @property
    def doorbell(self) -> str:
        """A one-entry stream rung whenever a lane gets entries: idle workers block on
        it, then read through the rotation."""
        return f"{self.prefix}:{{{self.queue}}}:doorbell"

    @property
    def scheduled(self) -> str:
        return f"{self.prefix}:{{{self.queue}}}:scheduled"

    @property
    def held(self) -> str:
        """Hash: job id -> the job's newest stream entry (ready or in flight)."""
        return f"{self.prefix}:{{{self.queue}}}:held"

    @property
    def leader(self) -> str:
        return f"{self.prefix}:{{{self.queue}}}:leader"

    @property
    def events_channel(self) -> str:
        return f"{self.prefix}:events"

    @property
    def cancel_channel(self) -> str:
        return f"{self.prefix}:{{{self.queue}}}:cancel"


def rate_key(prefix: str, name: str) -> str:
    """A rate limiter shared by every process (see shared.ratelimit)."""
    return f"{prefix}:rate:{name}"


def type_slots_key(prefix: str, job_type: str) -> str:
    """Sorted set of the running jobs of one limited job type, scored by lease expiry
    (see shared.typelimits). One hash tag for all types: one script call admits a batch
    of several types."""
    return f"{prefix}:{{typelimits}}:running:{job_type}"


def type_reserved_key(prefix: str, job_type: str) -> str:
    """Sorted set of the held-back jobs of one limited job type woken for a freed slot,
    which is theirs when they come back, scored by when that runs out."""
    return f"{prefix}:{{typelimits}}:reserved:{job_type}"


def type_waiting_key(prefix: str, job_type: str) -> str:
    """Sorted set of the delayed-set members of one job type's jobs held back by its
    full concurrency cap, scored by their place in line."""
    return f"{prefix}:{{typelimits}}:waiting:{job_type}"


def type_line_tags_key(prefix: str, job_type: str) -> str:
    """Hash: the clock of one job type's waiting line (the last place each tenant was
    given, and under "" the place last woken), which makes the line fair."""
    return f"{prefix}:{{typelimits}}:line:{job_type}"
