"""Job types are plugins: an async (or plain) function plus a pydantic payload model,
registered with :func:`job_type`. This module is a public contract::

    from pydantic import BaseModel
    from shared.jobtypes import job_type, JobContext, PermanentError

    class Echo(BaseModel):
        text: str

    @job_type("echo", payload=Echo)          # optional: max_retries=…, timeout_seconds=…,
                                             # concurrency=…, rate="10/s" (see below)
    async def echo(payload: Echo, ctx: JobContext) -> dict:
        return {"text": payload.text}        # stored as the job's result

Where a handler runs:

- ``async def``: on the worker's event loop. CPU-heavy parts go to the worker's process
  pool with ``await ctx.run_in_process(func, *args)``: the job's timeout or a cancel kills
  that child process, so the work really stops.
- plain ``def`` (the default, ``isolation="thread"``): in a thread of the worker's own
  bounded pool (one thread per job slot, apart from the loop's default executor, so DNS
  look-ups never wait behind handlers), with the full :class:`JobContext`. A thread cannot
  be stopped: after a timeout the job is recorded and retried, but the thread runs on.
- plain ``def`` with ``isolation="process"``: in a child process of the worker's pool,
  killed at the job's timeout or cancel. It gets a :class:`ProcessContext` (ids, counts,
  settings, a logger: no HTTP client or artifact store can cross a process boundary), and
  its payload and result must pickle. Return what it produces; to save a file, use an
  async handler that calls ``ctx.run_in_process`` and then ``ctx.artifacts.save``.

Limits across all workers together (``JOBQUEUE_TYPE_LIMITS`` overrides them per type, see
:mod:`shared.typelimits`): ``concurrency=N`` lets at most N jobs of the type run at once,
``rate="10/s"`` (``COUNT/PERIOD``, a period of s, m or h, e.g. ``5/2s``) starts at most
that many per period, with a burst of one period's worth. A job held back by either
waits, queued, without using a slot or a retry.

Services import the modules named in ``JOBQUEUE_HANDLER_MODULES``; importing a module
registers its types.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import inspect
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import Any, Literal, TypeVar

import httpx
from pydantic import BaseModel

from shared.artifacts import JobArtifacts
from shared.errors import PermanentError, Retry
from shared.logs import Log, bound
from shared.procpool import ProcessPool
from shared.ratelimit import Rate
from shared.settings import Settings

__all__ = ["REGISTRY", "Isolation", "JobContext", "JobType", "PermanentError",
           "ProcessContext", "Retry", "job_type", "load_handler_modules"]

Handler = Callable[[Any, Any], Any]
"""The second argument is a JobContext, or a ProcessContext for isolation="process"."""
F = TypeVar("F", bound=Handler)
T = TypeVar("T")
Isolation = Literal["thread", "process"]


@dataclass
class ProcessContext:
    """What a ``def`` handler registered with ``isolation="process"`` knows about its run:
    the part of :class:`JobContext` that can be pickled into a child process."""

    job_id: str
    job_type: str
    attempt: int
    """1 for the first run; a redelivery after a crash or a retry counts up."""
    retries: int
    max_retries: int
    worker_id: str
    log: Log
    """In a child process its lines go, as JSON, to the worker's stderr (not its log file)."""
    settings: Settings


@dataclass
class JobContext(ProcessContext):
    """What a handler knows about the run it is in."""

    http: httpx.AsyncClient
    """The worker's shared HTTP client (one connection pool per process)."""
    artifacts: JobArtifacts
    """Files this run produces: ``await ctx.artifacts.save(name, data, content_type)``."""
    processes: ProcessPool
    """The worker's process pool (``run_in_process``, ``isolation="process"``)."""

    async def run_in_process(self, func: Callable[..., T], *args: Any) -> T:
        """``func(*args)`` in a child process of the worker's pool, and its result.

        ``func`` is a module-level function; its arguments and result pickle. The job's
        timeout or a cancel kills the child (this await then raises as the handler's would);
        a child that dies raises ProcessDied (retried); what ``func`` raises comes back as
        itself (a PermanentError is not retried) with the child's traceback as its cause.
        """
        return await self.processes.run(func, *args)

    def for_process(self) -> ProcessContext:
        return ProcessContext(**{f.name: getattr(self, f.name)
                                 for f in fields(ProcessContext)})


@dataclass(frozen=True)
class JobType:
    name: str
    handler: Handler
    payload: type[BaseModel]
    max_retries: int | None = None
    timeout_seconds: float | None = None
    retry_base_seconds: float | None = None
    retry_max_seconds: float | None = None
    isolation: Isolation = "thread"
    """Where a plain ``def`` handler runs (see the module docstring)."""
    concurrency: int | None = None
    """At most this many jobs of the type run at once on all workers together."""
    rate: Rate | None = None
    """At most this many jobs of the type start per period on all workers together."""

    async def run(self, payload: BaseModel, ctx: JobContext) -> Any:
        if inspect.iscoroutinefunction(self.handler):
            return await self.handler(payload, ctx)
        if self.isolation == "process":
            return await ctx.run_in_process(_run_isolated, self.handler, payload,
                                            ctx.for_process())
        call = contextvars.copy_context().run  # the thread logs with the job's ids
        result = await asyncio.get_running_loop().run_in_executor(
            handler_threads(ctx.settings.concurrency), call, self.handler, payload, ctx)
        if inspect.isawaitable(result):
            return await result
        return result


def _run_isolated(handler: Handler, payload: BaseModel, ctx: ProcessContext) -> Any:
    """A process-isolated handler's run, in the child."""
    with bound(jobId=ctx.job_id, jobType=ctx.job_type, attempt=ctx.attempt,
               workerId=ctx.worker_id):
        return handler(payload, ctx)


_threads: ThreadPoolExecutor | None = None
_threads_size = 0


def handler_threads(size: int) -> ThreadPoolExecutor:
    """The threads plain ``def`` handlers run in (created on first use, ``size`` threads:
    one per job slot). NOTE: their own, not the loop's default executor: a handler that
    blocks for long must never hold up ``loop.getaddrinfo`` (the outbound guard's DNS).
    A handler that outlives its job's timeout keeps its thread, so at most ``size`` such
    threads can pile up; a job waiting for a thread has its timeout running."""
    global _threads, _threads_size
    if _threads is None or _threads_size < size:  # a worker with more slots: grow
        if _threads is not None:
            _threads.shutdown(wait=False)
        _threads = ThreadPoolExecutor(max_workers=size, thread_name_prefix="job-handler")
        _threads_size = size
    return _threads


def shutdown_handler_threads() -> None:
    """Let the handler threads end once their work is done (at worker shutdown)."""
    global _threads
    if _threads is not None:
        _threads.shutdown(wait=False, cancel_futures=True)
        _threads = None


REGISTRY: dict[str, JobType] = {}


def job_type(name: str, *, payload: type[BaseModel], max_retries: int | None = None,
             timeout_seconds: float | None = None, retry_base_seconds: float | None = None,
             retry_max_seconds: float | None = None, isolation: Isolation = "thread",
             concurrency: int | None = None, rate: str | None = None) -> Callable[[F], F]:
    """Register the decorated function as the handler of job type ``name``.

    ``concurrency`` and ``rate`` limit the type across all workers (ValueError here when
    they are not a positive integer and a ``COUNT/PERIOD`` rate)."""
    if concurrency is not None and (isinstance(concurrency, bool)
                                    or not isinstance(concurrency, int) or concurrency < 1):
        raise ValueError(f"job type {name!r}: concurrency must be a positive integer, "
                         f"not {concurrency!r}")
    try:
        parsed_rate = None if rate is None else Rate.parse(rate)
    except ValueError as exc:
        raise ValueError(f"job type {name!r}: {exc}") from None

    def register(func: F) -> F:
        if isolation == "process" and inspect.iscoroutinefunction(func):
            raise ValueError(f"job type {name!r}: isolation='process' is for a plain def "
                             "handler; an async handler sends its heavy part to the pool "
                             "with ctx.run_in_process")
        existing = REGISTRY.get(name)
        if existing is not None and existing.handler is not func:
            raise ValueError(f"job type {name!r} is registered twice "
                             f"({existing.handler.__module__} and {func.__module__})")
        REGISTRY[name] = JobType(name=name, handler=func, payload=payload,
                                 max_retries=max_retries, timeout_seconds=timeout_seconds,
                                 retry_base_seconds=retry_base_seconds,
                                 retry_max_seconds=retry_max_seconds, isolation=isolation,
                                 concurrency=concurrency, rate=parsed_rate)
        return func

    return register


def load_handler_modules(modules: Iterable[str]) -> dict[str, JobType]:
    """Import each module (registering its job types) and return the registry."""
    for module in modules:
        importlib.import_module(module)
    return REGISTRY


