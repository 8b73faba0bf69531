"""What every service process does at start: settings, logging, stores, signals."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from redis.asyncio import Redis

from shared.artifacts import ArtifactStore
from shared.clock import RedisClock
from shared.keys import Keys
from shared.logs import setup_logging
from shared.models import Job, WebhookDelivery
from shared.queue import RedisQueue
from shared.settings import Settings
from shared.stores import open_mongo, open_redis


@dataclass
class Stores:
    mongo: AsyncMongoClient[dict[str, Any]]
    redis: Redis
    queue: RedisQueue
    clock: RedisClock
    jobs: AsyncCollection[dict[str, Any]]
    deliveries: AsyncCollection[dict[str, Any]]
    artifacts: ArtifactStore

    async def close(self) -> None:
        await self.redis.aclose()
        await self.mongo.close()


async def open_stores(settings: Settings, *, bounded: bool = False) -> Stores:
    """Open MongoDB and Redis; ``bounded`` as in :func:`shared.stores.open_mongo`."""
    mongo = await open_mongo(settings, bounded=bounded)
    redis = open_redis(settings)
    queue = RedisQueue(redis, Keys(settings.redis_prefix, settings.queue_name))
    clock = RedisClock()
    await clock.sync(redis)
    await queue.ensure_groups()
    db = mongo[settings.mongodb_database]
    artifacts = ArtifactStore(db)
    await artifacts.ensure_indexes()
    return Stores(mongo=mongo, redis=redis, queue=queue, clock=clock,
                  jobs=db[Job.Settings.name],
                  deliveries=db[WebhookDelivery.Settings.name], artifacts=artifacts)


def start_service(name: str) -> Settings:
    settings = Settings()
    settings.require_stores()
    setup_logging(name, settings.log_dir, settings.log_level)
    return settings


def on_stop_signals(stop: Callable[[], None]) -> None:
    """Call ``stop`` on SIGTERM or SIGINT (Ctrl-C)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
