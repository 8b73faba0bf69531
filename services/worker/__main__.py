"""``jobqueue worker``: run jobs from the queue until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio

from services.runtime import on_stop_signals, open_stores, start_service
from services.worker.worker import Worker
from shared.jobtypes import load_handler_modules, shutdown_handler_threads


async def serve(concurrency: int | None, burst: bool) -> None:
    settings = start_service("worker")
    if concurrency:
        settings.concurrency = concurrency
    registry = load_handler_modules(settings.handler_modules)
    stores = await open_stores(settings)
    worker = Worker(settings, stores.jobs, stores.queue, stores.clock, registry,
                    stores.artifacts)
    on_stop_signals(worker.stop)
    try:
        await worker.run(burst=burst)
    finally:
        shutdown_handler_threads()
        await stores.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="jobqueue worker")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="jobs run at once by this process (JOBQUEUE_CONCURRENCY)")
    parser.add_argument("--burst", action="store_true",
                        help="exit once the queue is empty")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.concurrency, args.burst))


if __name__ == "__main__":
    main()
