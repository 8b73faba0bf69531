"""Retry delays: exponential backoff with full jitter, capped."""

from __future__ import annotations

import random


def next_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number ``attempt`` (1 for the first retry).

    Full jitter (a uniform draw below the exponential ceiling) spreads retries of jobs
    that failed together, so a recovering dependency is not hit by a synchronized wave.
    """
    if attempt < 1:
        raise ValueError("attempt counts from 1")
    ceiling = min(cap, base * 2 ** min(attempt - 1, 62))
    return (rng or random).uniform(0, ceiling)
