"""Liveness and readiness."""

from __future__ import annotations

import asyncio
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
    """MongoDB and Redis both answer (503 naming the one that does not)."""
    timeout = ctx.settings.mongodb_timeout_seconds
    checks: dict[str, Any] = {}
    for name, probe in (("mongodb", ctx.stores.mongo.admin.command("ping")),
                        ("redis", ctx.stores.redis.ping())):
        try:
            await asyncio.wait_for(probe, timeout)
            checks[name] = "ok"
        except Exception as exc:
            checks[name] = f"unavailable: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ready" if ready else "unavailable", "checks": checks},
                        status_code=200 if ready else 503)
