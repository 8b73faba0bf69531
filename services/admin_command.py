"""What the admin commands (``jobqueue keys``, ``jobqueue tenants``) share: running one
subcommand against the services' MongoDB, with store errors as one line, not a
traceback."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from shared.settings import Settings

Db = AsyncDatabase[dict[str, Any]]
Subcommand = Callable[[Db, argparse.Namespace, Settings], Awaitable[None]]


def run_subcommand(args: argparse.Namespace, appname: str) -> None:
    """Run ``args.run`` (set by the parser) with the database JOBQUEUE_* names."""
    try:
        asyncio.run(_run(args.run, args, Settings(), appname))
    except PyMongoError as exc:
        raise SystemExit(f"MongoDB: {exc}") from None


async def _run(run: Subcommand, args: argparse.Namespace, settings: Settings,
               appname: str) -> None:
    if not settings.mongodb_url:
        raise SystemExit("JOBQUEUE_MONGODB_URL is not set: point it at the MongoDB the "
                         "services use")
    timeout_ms = int(settings.mongodb_timeout_seconds * 1000)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        settings.mongodb_url, tz_aware=True, serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms, appname=appname)
    try:
        await run(client[settings.mongodb_database], args, settings)
    finally:
        await client.close()
