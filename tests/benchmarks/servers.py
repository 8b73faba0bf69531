"""The stores a benchmark runs on: those its --redis-url / --mongodb-url name, or
embedded ones started for it."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from services.dev.embedded import EmbeddedServer, start_mongodb, start_redis


@contextmanager
def stores_for(args: argparse.Namespace, base: Path) -> Iterator[list[EmbeddedServer]]:
    """Fill in ``args.redis_url`` and ``args.mongodb_url`` where unset with embedded
    servers under ``base``; yield those started, and stop them on the way out."""
    started: list[EmbeddedServer] = []
    try:
        if not args.redis_url:
            started.append(start_redis(base / "redis", persist=False))
            args.redis_url = started[-1].url
        if not args.mongodb_url:
            started.append(start_mongodb(base / "mongodb"))
            args.mongodb_url = started[-1].url
        yield started
    finally:
        for server in started:
            server.stop()
