"""The process pool on real child processes: results, errors, and that a timeout, a
cancel or a death really ends the child (its pid is gone) and the pool goes on."""

from __future__ import annotations

import asyncio
import ctypes
import os
import pickle
import sys
import traceback
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shared.errors import PermanentError, ProcessDied, RemoteError, Retry
from shared.procpool import ProcessPool
from tests.support import gone, lines, wait_until

# -- what the children run (module level: a call is pickled by name) ------------------


def add(a: int, b: int) -> int:
    return a + b


def pid() -> int:
    return os.getpid()


def spin(path: str) -> None:
    Path(path).write_text(str(os.getpid()))
    while True:
        pass


def fails(kind: str) -> None:
    if kind == "permanent":
        raise PermanentError("cannot ever work")
    if kind == "retry":
        raise Retry("later", delay=7.5)
    if kind == "unpicklable":
        raise Unpicklable(object())
    if kind == "exit":
        sys.exit(3)
    os._exit(7)


def segfault() -> None:
    ctypes.string_at(0)


def unpicklable_result() -> object:
    return lambda: None


class Unpicklable(Exception):
    def __init__(self, thing: object) -> None:
        super().__init__("holds a thing")
        self.thing = lambda: thing


# -- helpers --------------------------------------------------------------------------


@pytest.fixture
async def pool() -> AsyncIterator[ProcessPool]:
    p = ProcessPool(2)
    try:
        yield p
    finally:
        await p.close()


async def started(path: Path) -> int:
    async def written() -> bool:
        return bool(lines(path))
    await wait_until(written, 60, "the child to start spinning", interval=0.02)
    return int(lines(path)[0])


# -- tests ----------------------------------------------------------------------------


async def test_results_and_exceptions_come_back(pool: ProcessPool) -> None:
    assert await pool.run(add, 2, 3) == 5
    assert await pool.run(pid) != os.getpid()

    with pytest.raises(PermanentError, match="cannot ever work") as raised:
        await pool.run(fails, "permanent")
    text = "".join(traceback.format_exception(raised.value))
    assert 'raise PermanentError("cannot ever work")' in text  # the child's traceback

    with pytest.raises(Retry) as retry:
        await pool.run(fails, "retry")
    assert retry.value.delay == 7.5

    with pytest.raises(RemoteError, match="Unpicklable: holds a thing") as remote:
        await pool.run(fails, "unpicklable")
    assert remote.value.type_name == "Unpicklable"

    # NOTE: a child's SystemExit must not stop the caller
    with pytest.raises(RemoteError, match="SystemExit: 3"):
        await pool.run(fails, "exit")


async def test_what_does_not_pickle_is_refused_and_the_child_stays(pool: ProcessPool
                                                                   ) -> None:
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        await pool.run(add, lambda: 1, 2)
    assert pool.pids == []  # refused before any child was started
    first = await pool.run(pid)
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        await pool.run(unpicklable_result)
    assert await pool.run(pid) == first


async def test_a_timeout_kills_the_child(pool: ProcessPool, tmp_path: Path) -> None:
    path = tmp_path / "pid"
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(None) as deadline:
            call = asyncio.ensure_future(pool.run(spin, str(path)))
            child = await started(path)
            deadline.reschedule(asyncio.get_running_loop().time() + 0.2)
            await call
    assert gone(child)
    assert pool.busy == [] and child not in pool.pids
    assert await pool.run(add, 1, 1) == 2


async def test_a_cancel_kills_the_child(pool: ProcessPool, tmp_path: Path) -> None:
    path = tmp_path / "pid"
    call = asyncio.create_task(pool.run(spin, str(path)))
    child = await started(path)
    assert not gone(child)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert gone(child)
    assert await pool.run(add, 2, 2) == 4


async def test_a_child_that_dies_is_an_error_and_is_replaced(pool: ProcessPool) -> None:
    first = await pool.run(pid)
    with pytest.raises(ProcessDied, match="exit code 7"):
        await pool.run(fails, "os._exit")
    with pytest.raises(ProcessDied, match="killed by SIGSEGV"):
        await pool.run(segfault)
    assert gone(first) or first in pool.pids
    replaced = await pool.run(pid)
    assert not gone(replaced)
    assert all(not gone(p) for p in pool.pids)


async def test_calls_wait_for_a_free_child(tmp_path: Path) -> None:
    pool = ProcessPool(1)
    try:
        assert len(set(await asyncio.gather(*(pool.run(pid) for _ in range(4))))) == 1
        # The only child spins; a waiter is cancelled; then the spinner is cancelled:
        # the slot must come back (no call waits for ever).
        spinner = asyncio.create_task(pool.run(spin, str(tmp_path / "pid")))
        await started(tmp_path / "pid")
        waiter = asyncio.create_task(pool.run(add, 1, 2))
        await asyncio.sleep(0)
        waiter.cancel()
        spinner.cancel()
        await asyncio.gather(spinner, waiter, return_exceptions=True)
        assert await asyncio.wait_for(pool.run(add, 3, 4), 60) == 7
    finally:
        await pool.close()


async def test_close_kills_every_child(tmp_path: Path) -> None:
    pool = ProcessPool(2)
    idle = await pool.run(pid)
    call = asyncio.create_task(pool.run(spin, str(tmp_path / "pid")))
    busy = await started(tmp_path / "pid")
    await pool.close()
    assert gone(idle) and gone(busy)
    with pytest.raises(ProcessDied):
        await call
    with pytest.raises(RuntimeError, match="closed"):
        await pool.run(pid)
