"""Opening the backing stores: MongoDB (through Beanie) and Redis."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from beanie import init_beanie
from pymongo import AsyncMongoClient
from pymongo.errors import ConnectionFailure, ExecutionTimeout, OperationFailure
from redis.asyncio import Redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry as RedisRetry

from shared.logs import get_log
from shared.models import ApiKey, Job, WebhookDelivery
from shared.settings import Settings

MONGO_MODELS: list[Any] = [Job, WebhookDelivery, ApiKey]
STARTUP_WAIT_SECONDS = 120.0
INDEX_NOT_FOUND = 27
RETIRED_INDEXES = {"jobs": ["status_updated", "idempotency_key_unique"]}
"""Indexes earlier versions made, dropped at start-up: each costs every write, and the
global idempotency index would keep keys from being per tenant."""
log = get_log(__name__)


async def open_mongo(settings: Settings, *, bounded: bool = False
                     ) -> AsyncMongoClient[dict[str, Any]]:
    """Connect and initialise Beanie (creating missing indexes).

    ``bounded`` (the API) gives every operation, waiting for a pooled connection
    included, ``mongodb_timeout_seconds`` in all (PyMongo's client-side operation
    timeout), so a MongoDB that stopped answering costs a request that long, then a 503.
    Services that must finish their writes (workers, notifier) retry instead.
    """
    _, url = settings.require_stores()
    timeout_ms = int(settings.mongodb_timeout_seconds * 1000)
    per_operation: dict[str, Any] = {"timeoutMS": timeout_ms} if bounded else {
        "socketTimeoutMS": max(timeout_ms * 5, 15_000)}
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        url, tz_aware=True, serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms, appname="jobqueue", **per_operation)
    # NOTE: a MongoDB that is starting, restarting or briefly frozen is waited for
    # (index creation included), rather than failing the process at start-up.
    deadline = time.monotonic() + STARTUP_WAIT_SECONDS
    delay = 0.2
    while True:
        try:
            await init_beanie(database=client[settings.mongodb_database],
                              document_models=MONGO_MODELS)
            await _drop_retired_indexes(client[settings.mongodb_database])
            return client
        except (ConnectionFailure, ExecutionTimeout, TimeoutError) as exc:
            if time.monotonic() + delay > deadline:
                await client.close()
                raise
            log.warning("mongodb.not_ready", error=str(exc)[:300], retryInSeconds=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def _drop_retired_indexes(db: Any) -> None:
    for collection, names in RETIRED_INDEXES.items():
        existing = {index["name"] async for index in await db[collection].list_indexes()}
        for name in names:
            if name in existing:
                try:
                    await db[collection].drop_index(name)
                except OperationFailure as exc:  # another process dropped it first
                    if exc.code != INDEX_NOT_FOUND:
                        raise
                log.warning("mongodb.retired_index_dropped", collection=collection, index=name)


def open_redis(settings: Settings) -> Redis:
    """A pooled client that retries dropped connections with backoff by itself."""
    url, _ = settings.require_stores()
    # NOTE: the socket timeout outlasts the workers' blocking stream reads (1 s), and a
    # Redis that stopped answering still fails a call in bounded time.
    return Redis.from_url(
        url, decode_responses=True, health_check_interval=15, socket_connect_timeout=3,
        socket_timeout=5, socket_keepalive=True,
        retry=RedisRetry(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError])
