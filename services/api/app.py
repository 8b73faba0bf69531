"""The API app factory: a lifespan that opens MongoDB and Redis, one router per resource,
one place that turns errors into JSON."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.api.auth import AuthGate, KeyRing
from services.api.deps import ApiContext
from services.api.errors import install_error_handlers
from services.api.limits import BodySizeLimit
from services.api.routes import artifacts, deliveries, health, jobs, live
from services.api.submit import Submitter
from services.api.submit_rate import SubmitRate
from services.api.watchers import Watchers
from services.runtime import open_stores
from shared.apikeys import api_keys
from shared.jobtypes import load_handler_modules
from shared.logs import flush_logs, get_log
from shared.ratelimit import Rate, RateLimiter
from shared.settings import Settings
from shared.supervise import cancel_and_wait, supervise

EXIT_HELPER_CRASHED = 70  # EX_SOFTWARE: a supervised helper died
log = get_log(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry = load_handler_modules(settings.handler_modules)
        stores = await open_stores(settings, bounded=True)
        watchers = Watchers(stores.redis, stores.queue.keys.events_channel,
                            settings.sse_max_clients, settings.sse_max_clients_per_tenant)
        crashed = asyncio.Event()

        def stop_loudly() -> None:  # a graceful shutdown by uvicorn, then exit status 70
            crashed.set()
            os.kill(os.getpid(), signal.SIGTERM)

        submitter = Submitter(settings, stores.jobs, stores.queue, stores.clock, registry,
                              on_fatal=stop_loudly)
        subscriber = supervise("watchers", watchers.run(), stop_loudly)
        keyring = KeyRing(api_keys(stores.mongo[settings.mongodb_database]),
                          settings.api_key_cache_seconds)
        submit_rate = SubmitRate(RateLimiter(stores.redis, settings.redis_prefix),
                                 Rate.parse(settings.submit_rate_limit)
                                 if settings.submit_rate_limit else None)
        app.state.context = ApiContext(settings, stores, registry, submitter, watchers,
                                       keyring, submit_rate)
        await _log_access_mode(settings, keyring)
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
    # NOTE: added last, so outermost: a caller that may not call is refused first.
    app.add_middleware(AuthGate, enabled=settings.auth == "enabled")
    return app


async def _log_access_mode(settings: Settings, keyring: KeyRing) -> None:
    """Say at start-up who may call (see services/api/auth.py)."""
    if settings.auth == "disabled":
        log.warning("api.auth_disabled", note="JOBQUEUE_AUTH=disabled: no API key is "
                    "checked; every caller may do everything")
    elif await keyring.any_key_made():
        log.info("api.auth_keys", note="every request needs an API key")
    else:
        log.warning("api.protected_mode", note="no API key exists yet: answering "
                    "clients on this machine (loopback) only; create one with `jobqueue "
                    "keys create --tenant NAME`, or set JOBQUEUE_AUTH=disabled")
