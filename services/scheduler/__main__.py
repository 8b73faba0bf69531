"""``jobqueue scheduler``: promote, reclaim, reconcile, expire finished jobs and delete
dead workers' consumers, on APScheduler intervals."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from services.runtime import on_stop_signals, open_stores, start_service
from services.scheduler.consumers import INTERVAL_SECONDS as CONSUMERS_INTERVAL_SECONDS
from services.scheduler.consumers import ConsumerCleanup
from services.scheduler.retention import Retention
from services.scheduler.scheduler import Scheduler
from shared.logs import get_log

log = get_log(__name__)


def guarded(step: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[None]]:
    """A failing step (a store briefly down) is logged with its traceback and tried
    again next interval."""

    async def run() -> None:
        try:
            await step()
        except Exception as exc:
            log.exception("scheduler.step_failed", step=getattr(step, "__name__", "step"),
                          error=str(exc), errorType=type(exc).__name__)

    return run


async def serve() -> None:
    settings = start_service("scheduler")
    stores = await open_stores(settings)
    scheduler = Scheduler(settings, stores.jobs, stores.queue, stores.clock)
    retention = Retention(scheduler, stores.deliveries, stores.artifacts)
    consumers = ConsumerCleanup(scheduler)
    timer = AsyncIOScheduler()
    for step, seconds in ((scheduler.lead, settings.leader_ttl_seconds / 3),
                          (scheduler.promote_due, settings.promote_interval_seconds),
                          (scheduler.reclaim, settings.reclaim_interval_seconds),
                          (scheduler.reconcile, settings.reconcile_interval_seconds),
                          (retention.sweep, settings.retention_sweep_interval_seconds),
                          (consumers.sweep, CONSUMERS_INTERVAL_SECONDS),
                          (lambda: stores.clock.sync(stores.redis), 60.0)):
        timer.add_job(guarded(step), "interval", seconds=seconds, max_instances=1,
                      coalesce=True, misfire_grace_time=None)
    stop = asyncio.Event()
    on_stop_signals(stop.set)
    await guarded(scheduler.lead)()
    timer.start()
    log.info("scheduler.started", token=scheduler.token)
    await stop.wait()
    timer.shutdown(wait=False)
    await stores.close()
    log.info("scheduler.stopped")


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(prog="jobqueue scheduler").parse_args(argv)
    asyncio.run(serve())


if __name__ == "__main__":
    main()
