"""One clock for every host: Redis ``TIME``.

Run times are compared by the scheduler against Redis time, so hosts whose clocks drift
must not compute them from their own. Each process measures its offset to Redis once and
refreshes it now and then, instead of paying a round trip per timestamp.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis


class RedisClock:
    def __init__(self) -> None:
        self.offset = 0.0

    async def sync(self, redis: Redis) -> None:
        before = time.time()
        seconds, micros = await redis.time()
        after = time.time()
        self.offset = seconds + micros / 1e6 - (before + after) / 2

    def timestamp(self) -> float:
        return time.time() + self.offset

    def now(self) -> datetime:
        # BSON datetimes keep milliseconds; truncating here keeps stored and returned equal.
        ms = int(self.timestamp() * 1000)
        return datetime.fromtimestamp(ms / 1000, UTC)

    def after(self, seconds: float) -> datetime:
        return self.now() + timedelta(seconds=seconds)


def to_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)
