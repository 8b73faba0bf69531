"""The API app factory: a lifespan that opens MongoDB and Redis, one router per resource,
one place that turns errors into JSON."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.api.deps import ApiContext
from services.api.errors import install_error_handlers
from services.api.limits import BodySizeLimit
from services.api.routes import artifacts, deliveries, health, jobs, live
from services.api.submit import Submitter
from services.api.watchers import Watchers
from services.runtime import open_stores
from shared.jobtypes import load_handler_modules
from shared.logs import flush_logs
from shared.settings import Settings
from shared.supervise import cancel_and_wait, supervise

EXIT_HELPER_CRASHED = 70  # EX_SOFTWARE: a supervised helper died


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry = load_handler_modules(settings.handler_modules)
        stores = await open_stores(settings, bounded=True)
        watchers = Watchers(stores.redis, stores.queue.keys.events_channel,
                            settings.sse_max_clients)
        crashed = asyncio.Event()

        def stop_loudly() -> None:  # a graceful shutdown by uvicorn, then exit status 70
            crashed.set()
            os.kill(os.getpid(), signal.SIGTERM)

        submitter = Submitter(settings, stores.jobs, stores.queue, stores.clock, registry,
                              on_fatal=stop_loudly)
        subscriber = supervise("watchers", watchers.run(), stop_loudly)
        app.state.context = ApiContext(settings, stores, registry, submitter, watchers)
        try:
            yield
        finally:
            await cancel_and_wait([subscriber])
            await submitter.close()
            await stores.close()
            if crashed.is_set():
                flush_logs()
                os._exit(EXIT_HELPER_CRASHED)

    app = FastAPI(title="jobqueue", version="0.1.0", lifespan=lifespan,
                  description="Submit background jobs, follow their status, get webhooks.")
    install_error_handlers(app)
    app.include_router(jobs.router)
    app.include_router(live.router)
    app.include_router(deliveries.router)
    app.include_router(artifacts.router)
    app.include_router(health.router)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    return app
