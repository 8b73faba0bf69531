"""Dead workers leave no trace in Redis: their consumers are deleted once empty.

A worker's consumer in a stream's group outlives the worker. Once the reclaimer has
taken its pending entries away, and it has been idle (no read, no heartbeat) for
``consumer_idle_after_seconds`` (10 x the visibility timeout unless set), the leading
scheduler deletes it. A consumer that still owns pending entries is never deleted: the
reclaimer gets to them first.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.scheduler.scheduler import Scheduler
from shared.logs import get_log

log = get_log(__name__)
INTERVAL_SECONDS = 60.0


@dataclass
class ConsumerCleanup:
    scheduler: Scheduler

    async def sweep(self) -> int:
        """Delete the idle, empty consumers of every lane's stream (leader only)."""
        if not self.scheduler.is_leader:
            return 0
        queue = self.scheduler.queue
        idle_ms = int(self.scheduler.settings.consumer_idle_after_seconds * 1000)
        streams = [queue.keys.lane_stream(lane) for lane in await queue.lanes()]
        deleted = await queue.delete_idle_consumers(streams, idle_ms)
        if deleted:
            log.info("scheduler.consumers_deleted", consumers=deleted)
        return deleted
