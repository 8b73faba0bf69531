"""Every Redis key and channel name, in one place.

Queue keys share the hash tag ``{queue}`` so that one queue lives on one Redis Cluster
slot and its Lua scripts may touch all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.status import PRIORITIES_IN_READ_ORDER, Priority

CONSUMER_GROUP = "workers"
RECLAIMER = "reclaimer"


@dataclass(frozen=True)
class Keys:
    prefix: str = "jq"
    queue: str = "default"

    def stream(self, priority: Priority | str) -> str:
        return f"{self.prefix}:{{{self.queue}}}:stream:{priority}"

    def streams(self) -> list[str]:
        """Stream keys in read order: high first."""
        return [self.stream(p) for p in PRIORITIES_IN_READ_ORDER]

    @property
    def scheduled(self) -> str:
        return f"{self.prefix}:{{{self.queue}}}:scheduled"

    @property
    def held(self) -> str:
        """Set of job ids that have an entry in one of the streams (ready or in flight)."""
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
