"""Supervised helper tasks: a long-lived helper that dies takes its process down loudly.

A process's helpers (a subscriber, a flusher, a heartbeat) run next to its main work. If
one of them ended silently, the process would look alive while doing half its job, so
a helper that raises, or returns although it was meant to run until cancelled, is logged
as critical and handed to ``on_crash``, which stops the process. Cancelling the task is
the normal way to stop a helper and is not a crash.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
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
