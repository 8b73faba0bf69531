"""No-op tasks for the peers benchmark (arq and RQ import them by path)."""

from __future__ import annotations

import os
from typing import Any, ClassVar


async def noop(ctx: dict[str, Any]) -> None:
    """arq task."""


def rq_noop() -> None:
    """RQ task."""


class ArqSettings:
    """arq worker settings: ``arq tests.benchmarks.peer_tasks.ArqSettings --burst``."""

    functions: ClassVar[list[Any]] = [noop]
    max_jobs = 50
    keep_result = 0

    @staticmethod
    def _redis() -> Any:
        from arq.connections import RedisSettings

        return RedisSettings.from_dsn(os.environ["BENCH_REDIS_URL"])


ArqSettings.redis_settings = ArqSettings._redis()  # type: ignore[attr-defined]
