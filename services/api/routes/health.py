"""Liveness and readiness."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from services.api.deps import Context

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(ctx: Context) -> JSONResponse:
    """MongoDB and Redis both answer (503 naming the one that does not).

    SSE watchers cannot starve these probes: they share one Redis subscription and
    read MongoDB a few at a time (services.api.watchers)."""
    timeout = ctx.settings.mongodb_timeout_seconds
    names = ("mongodb", "redis")
    results = await asyncio.gather(
        _probe(ctx.stores.mongo.admin.command("ping"), timeout),
        _probe(ctx.stores.redis.ping(), timeout))
    checks: dict[str, Any] = dict(zip(names, results, strict=True))
    ready = all(v == "ok" for v in checks.values())
    watchers = ctx.watchers
    return JSONResponse({"status": "ready" if ready else "unavailable", "checks": checks,
                         "watchers": {"active": len(watchers), "jobs": watchers.jobs_watched,
                                      "max": watchers.max_watchers,
                                      "subscribed": watchers.subscribed}},
                        status_code=200 if ready else 503)


async def _probe(check: Awaitable[Any], seconds: float) -> str:
    try:
        await asyncio.wait_for(check, seconds)
    except Exception as exc:
        return f"unavailable: {type(exc).__name__}"
    return "ok"
