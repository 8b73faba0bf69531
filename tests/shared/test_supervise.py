"""A supervised helper that ends by itself is a crash; one that is cancelled is not."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Coroutine, Iterator
from typing import Any

import pytest

from shared.logs import JsonFormatter
from shared.supervise import cancel_and_wait, supervise


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@pytest.fixture
def logged() -> Iterator[list[dict[str, object]]]:
    handler = Lines()
    logger = logging.getLogger("shared.supervise")
    logger.addHandler(handler)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)


async def run_to_end(helper: Coroutine[Any, Any, None]) -> list[str]:
    calls: list[str] = []
    task = supervise("helper", helper, lambda: calls.append("crash"))
    await asyncio.wait_for(task, 5)
    return calls


async def test_an_exception_is_logged_critical_and_reported(
        logged: list[dict[str, object]]) -> None:
    async def helper() -> None:
        await asyncio.sleep(0)
        raise KeyError("gone")

    assert await run_to_end(helper()) == ["crash"]
    [line] = logged
    assert line["level"] == "critical" and line["event"] == "helper.crashed"
    assert line["helper"] == "helper" and line["errorType"] == "KeyError"
    assert "KeyError: 'gone'" in str(line["exception"])


async def test_returning_is_a_crash_too(logged: list[dict[str, object]]) -> None:
    async def helper() -> None:
        return None

    assert await run_to_end(helper()) == ["crash"]
    assert "returned; it must run until cancelled" in str(logged[0]["error"])


async def test_cancelling_is_a_normal_stop(logged: list[dict[str, object]]) -> None:
    calls: list[str] = []
    task = supervise("helper", asyncio.sleep(3600), lambda: calls.append("crash"))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert calls == [] and logged == []


async def test_cancel_and_wait_outlasts_a_helper_that_absorbs_a_cancel() -> None:
    absorbed = asyncio.Event()

    async def stubborn() -> None:  # swallows its first cancel, as a client library can
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            absorbed.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait([task], every_seconds=0.05), 5)
    assert absorbed.is_set() and task.cancelled()
