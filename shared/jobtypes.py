"""Job types are plugins: an async (or plain) function plus a pydantic payload model,
registered with :func:`job_type`. This module is a public contract::

    from pydantic import BaseModel
    from shared.jobtypes import job_type, JobContext, PermanentError

    class Echo(BaseModel):
        text: str

    @job_type("echo", payload=Echo)          # optional: max_retries=…, timeout_seconds=…
    async def echo(payload: Echo, ctx: JobContext) -> dict:
        return {"text": payload.text}        # stored as the job's result

A plain ``def`` handler runs in a worker thread, so its blocking work never stalls the
other jobs on the event loop. Services import the modules named in
``JOBQUEUE_HANDLER_MODULES``; importing a module registers its types.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from shared.artifacts import JobArtifacts
from shared.errors import PermanentError, Retry
from shared.logs import Log
from shared.settings import Settings

__all__ = ["REGISTRY", "JobContext", "JobType", "PermanentError", "Retry", "job_type",
           "load_handler_modules"]

Handler = Callable[[Any, "JobContext"], Any]
F = TypeVar("F", bound=Handler)


@dataclass
class JobContext:
    """What a handler knows about the run it is in."""

    job_id: str
    job_type: str
    attempt: int
    """1 for the first run; a redelivery after a crash or a retry counts up."""
    retries: int
    max_retries: int
    worker_id: str
    log: Log
    settings: Settings
    http: httpx.AsyncClient
    """The worker's shared HTTP client (one connection pool per process)."""
    artifacts: JobArtifacts
    """Files this run produces: ``await ctx.artifacts.save(name, data, content_type)``."""


@dataclass(frozen=True)
class JobType:
    name: str
    handler: Handler
    payload: type[BaseModel]
    max_retries: int | None = None
    timeout_seconds: float | None = None
    retry_base_seconds: float | None = None
    retry_max_seconds: float | None = None

    async def run(self, payload: BaseModel, ctx: JobContext) -> Any:
        if inspect.iscoroutinefunction(self.handler):
            return await self.handler(payload, ctx)
        result = await asyncio.to_thread(self.handler, payload, ctx)
        if inspect.isawaitable(result):
            return await result
        return result


REGISTRY: dict[str, JobType] = {}


def job_type(name: str, *, payload: type[BaseModel], max_retries: int | None = None,
             timeout_seconds: float | None = None, retry_base_seconds: float | None = None,
             retry_max_seconds: float | None = None) -> Callable[[F], F]:
    """Register the decorated function as the handler of job type ``name``."""

    def register(func: F) -> F:
        existing = REGISTRY.get(name)
        if existing is not None and existing.handler is not func:
            raise ValueError(f"job type {name!r} is registered twice "
                             f"({existing.handler.__module__} and {func.__module__})")
        REGISTRY[name] = JobType(name=name, handler=func, payload=payload,
                                 max_retries=max_retries, timeout_seconds=timeout_seconds,
                                 retry_base_seconds=retry_base_seconds,
                                 retry_max_seconds=retry_max_seconds)
        return func

    return register


def load_handler_modules(modules: Iterable[str]) -> dict[str, JobType]:
    """Import each module (registering its job types) and return the registry."""
    for module in modules:
        importlib.import_module(module)
    return REGISTRY


