"""Rate limits shared by every process, kept in Redis.

A :class:`Rate` such as ``100/s`` allows that many units per period and a burst of one
period's worth. :class:`RateLimiter` takes units from a named limiter in one atomic round
trip (``lua/rate.lua``, GCRA), so several API processes or workers share one budget.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.resources import files

from redis.asyncio import Redis

from shared.keys import rate_key

PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0}
RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([smh])\s*$")


@dataclass(frozen=True)
class Rate:
    count: int
    per_seconds: float

    @classmethod
    def parse(cls, text: str) -> Rate:
        """``"100/s"``, ``"10/m"``, ``"5/2s"``, ``"1000/h"``: ValueError otherwise."""
        match = RATE.fullmatch(text)
        if not match or int(match[1]) <= 0 or match[2] == "0":
            raise ValueError(f"invalid rate {text!r}: expected COUNT/PERIOD with a positive "
                             "count and a period of s, m or h (e.g. 100/s, 10/m, 5/2s)")
        return cls(int(match[1]), int(match[2] or 1) * PERIODS[match[3]])

    def __str__(self) -> str:
        return f"{self.count}/{self.per_seconds:g}s"

    @property
    def interval_ms(self) -> float:
        return self.per_seconds * 1000 / self.count


class RateLimiter:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self._take = redis.register_script(files("shared.lua").joinpath("rate.lua").read_text())

    async def take(self, name: str, rate: Rate, cost: int = 1) -> float:
        """Take ``cost`` units from limiter ``name``: 0.0 if they fit, else the seconds
        to wait before the same request would (nothing is taken then)."""
        wait_ms = await self._take(keys=[rate_key(self.prefix, name)],
                                   args=[rate.interval_ms, rate.count, cost])
        return int(wait_ms) / 1000
