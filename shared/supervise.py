"""Supervised helper tasks: a long-lived helper that dies takes its process down loudly.

A process's helpers (a subscriber, a flusher, a heartbeat) run next to its main work. If
one of them ended silently, the process would look alive while doing half its job, so
a helper that raises, or returns although it was meant to run until cancelled, is logged
as critical and handed to ``on_crash``, which stops the process. Cancelling the task is
the normal way to stop a helper and is not a crash; :func:`cancel_and_wait` does it so
that a helper cannot outlive its process's shutdown.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from shared.logs import get_log

log = get_log(__name__)


def supervise(name: str, helper: Coroutine[Any, Any, None],
              on_crash: Callable[[], None]) -> asyncio.Task[None]:
    """Run ``helper`` as a task named ``name``; call ``on_crash`` if it ever ends by
    itself (an exception or a return). Cancel the task to stop the helper."""
    return asyncio.create_task(_guard(name, helper, on_crash), name=name)


async def _guard(name: str, helper: Coroutine[Any, Any, None],
                 on_crash: Callable[[], None]) -> None:
    try:
        await helper
        raise RuntimeError(f"helper {name!r} returned; it must run until cancelled")
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.critical("helper.crashed", helper=name, errorType=type(exc).__name__,
                     error=str(exc))
    on_crash()


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], *,
                          every_seconds: float = 1.0) -> None:
    """Cancel ``tasks`` and wait until all have ended, cancelling again every
    ``every_seconds`` those still running.

    One cancel is not always enough: a client library may absorb a cancel that lands
    inside one of its calls (PyMongo's async driver has done so) and the helper loops
    on, which would hang the shutdown that waits for it.
    """
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=every_seconds)
