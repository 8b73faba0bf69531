"""Real servers for the whole session (embedded ones on free ports, or those named by
JOBQUEUE_TEST_REDIS_URL / JOBQUEUE_TEST_MONGODB_URL), and per-test isolation."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.api.app import create_app
from services.dev.embedded import EmbeddedServer, start_mongodb, start_redis
from services.runtime import Stores, open_stores
from services.scheduler.scheduler import Scheduler
from services.worker.worker import Worker
from shared.jobtypes import load_handler_modules
from shared.settings import Settings
from tests.faults import FaultProxy
from tests.support import bearer, isolated_settings


@dataclass
class Servers:
    redis_url: str
    mongodb_url: str


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    base = tmp_path_factory.mktemp("servers")
    started: list[EmbeddedServer] = []
    redis_url = os.environ.get("JOBQUEUE_TEST_REDIS_URL")
    mongodb_url = os.environ.get("JOBQUEUE_TEST_MONGODB_URL")
    try:
        if not redis_url:
            started.append(start_redis(base / "redis", persist=False))
            redis_url = started[-1].url
        if not mongodb_url:
            started.append(start_mongodb(base / "mongodb"))
            mongodb_url = started[-1].url
        yield Servers(redis_url, mongodb_url)
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def settings(servers: Servers, tmp_path: Path) -> Settings:
    return isolated_settings(servers.redis_url, servers.mongodb_url, tmp_path / "logs")


@pytest.fixture
async def stores(settings: Settings) -> AsyncIterator[Stores]:
    opened = await open_stores(settings)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The API app in-process, over ASGI, with its real lifespan (real stores)."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield client


@pytest.fixture
def make_worker(settings: Settings, stores: Stores):  # type: ignore[no-untyped-def]
    registry = load_handler_modules(settings.handler_modules)

    def make(**overrides: object) -> Worker:
        return Worker(settings.model_copy(update=overrides), stores.jobs, stores.queue,
                      stores.clock, registry, stores.artifacts)

    return make


@pytest.fixture
async def scheduler(settings: Settings, stores: Stores) -> AsyncIterator[Scheduler]:
    """A leading scheduler promoting due jobs in the background."""
    sched = Scheduler(settings, stores.jobs, stores.queue, stores.clock)
    assert await sched.lead()

    stop = asyncio.Event()

    async def loop() -> None:
        # NOTE: stopped by an event, not by cancellation: a cancel that lands inside a
        # PyMongo call can be absorbed by the driver, and the loop would run on.
        while not stop.is_set():
            await sched.lead()  # renewed as the real scheduler does: a lease expires
            await sched.promote_due()
            await asyncio.sleep(0.02)

    task = asyncio.create_task(loop())
    yield sched
    stop.set()
    await task


class Background:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.task = asyncio.create_task(worker.run())

    async def stop(self) -> None:
        self.worker.stop()
        await asyncio.wait_for(self.task, 30)


@pytest.fixture
async def background(make_worker: Any) -> AsyncIterator[Any]:
    started: list[Background] = []

    def start(**overrides: Any) -> Background:
        started.append(Background(make_worker(**overrides)))
        return started[-1]

    yield start
    for b in started:
        await b.stop()


@pytest.fixture
async def proxy(settings: Settings) -> AsyncIterator[FaultProxy]:
    """A fault-injecting proxy in front of the test MongoDB (see tests/faults.py)."""
    assert settings.mongodb_url
    started = await FaultProxy.for_url(settings.mongodb_url).start()
    yield started
    await started.close()


@pytest.fixture
def make_key(stores: Stores, settings: Settings):  # type: ignore[no-untyped-def]
    """``await make_key("acme", "read")``: headers with a new API key (tests.support.bearer)."""

    async def make(tenant: str, *scopes: str, submit_rate: str | None = None
                   ) -> dict[str, str]:
        return await bearer(stores.mongo[settings.mongodb_database], tenant, *scopes,
                            submit_rate=submit_rate)

    return make
