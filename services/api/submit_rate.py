"""The submit rate per API key (``JOBQUEUE_SUBMIT_RATE_LIMIT``, or the key's own rate),
one budget in Redis shared by every API process; a batch costs one unit per job."""

from __future__ import annotations

from redis.exceptions import RedisError

from services.api.auth import Principal
from shared.errors import RateLimited
from shared.logs import get_log
from shared.ratelimit import Rate, RateLimiter

log = get_log(__name__)
ANONYMOUS_LIMITER = "submit:anonymous"
"""Callers without a key (protected mode, authentication disabled) share one budget."""


class SubmitRate:
    def __init__(self, limiter: RateLimiter, default: Rate | None) -> None:
        self.limiter = limiter
        self.default = default

    async def take(self, caller: Principal, jobs: int) -> None:
        """Count ``jobs`` submissions against the caller's rate, or raise RateLimited
        (nothing is counted then)."""
        rate = caller.submit_rate or self.default
        if rate is None:
            return
        name = f"submit:{caller.key_id}" if caller.key_id else ANONYMOUS_LIMITER
        try:
            wait = await self.limiter.take(name, rate, jobs)
        except (RedisError, OSError) as exc:
            # NOTE: the limit protects the stores from floods; it must not refuse jobs
            # MongoDB could accept while Redis is briefly away (the reconciler enqueues
            # them later), so a limiter that cannot be asked lets the submit through.
            log.warning("api.submit_rate_unchecked", error=str(exc)[:300],
                        errorType=type(exc).__name__)
            return
        if wait:
            raise RateLimited(
                f"over this API key's submit rate of {rate}; try again in {wait:g} s",
                retry_after=wait,
                details={"limit": str(rate), "jobs": jobs, "retryAfterSeconds": wait})
