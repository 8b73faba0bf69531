"""A small pool of child processes, for work that a timeout or a cancel must really stop.

A thread cannot be stopped from outside: CPU-bound work (a PDF layout, an image resize, a
plain ``def`` handler that loops) run with ``asyncio.to_thread`` keeps its core after the
job's timeout, and every retry adds another. A child process can be killed. So::

    pool = ProcessPool(size=2)
    async with asyncio.timeout(30):
        result = await pool.run(func, *args)

sends ``(func, args)`` pickled to a free child over a socket pair and awaits the pickled
answer without blocking the event loop. ``func`` must be importable by name (a module-level
function), its arguments and result picklable.

- When the awaiting task is cancelled (a timeout: ``asyncio.timeout`` turns the cancel
  into ``TimeoutError``; the worker's deadline around a handler; a job cancel) the child
  is SIGKILLed and reaped before the exception propagates; the next call starts a new
  one. Deadlines are the caller's ``asyncio.timeout``: the pool has no timers of its own.
- A child that dies on its own (segfault, ``os._exit``, the OOM killer) raises
  :class:`ProcessDied`, an ordinary retryable failure, and is replaced the same way.
- An exception raised by ``func`` comes back as itself when it pickles (a
  ``PermanentError`` stays one, so it is not retried), else as :class:`RemoteError` with
  its type name and message; either way the child's traceback is chained as its cause.

Children start lazily, at most ``size`` at once, as fresh interpreters (``fork`` + ``exec``
of ``sys.executable``, what multiprocessing's ``spawn`` does, without its re-import of the
worker's ``__main__``): nothing of the worker's running event loop, threads or open
connections is copied into them. A child imports the modules a call needs on its first
call, with the worker's ``sys.path``.
"""

from __future__ import annotations

import asyncio
import atexit
import ctypes
import json
import logging
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import traceback
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from shared.errors import ProcessDied, RemoteError
from shared.logs import JsonFormatter

__all__ = ["ProcessDied", "ProcessPool", "RemoteError"]

T = TypeVar("T")
_HEADER = struct.Struct("!Q")
_BOOT = ("import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
         "from shared.procpool import _serve; _serve(*map(int, sys.argv[2:]))")
_PR_SET_PDEATHSIG = 1


class _RemoteTraceback(Exception):
    """Carries a child's traceback text as the cause of the exception re-raised here."""

    def __str__(self) -> str:
        return f'\n"""\n{self.args[0]}"""'


@dataclass(eq=False)
class _Child:
    process: subprocess.Popen[bytes]
    channel: socket.socket
    """Our end of the socket pair; non-blocking, used through the running loop."""
    pid: int
    reaped: asyncio.Task[None] | None = None
    exitcode: int | None = None


class ProcessPool:
    """At most ``size`` child processes, each running one call at a time."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("a process pool has at least one process")
        self.size = size
        self._children: set[_Child] = set()
        self._idle: list[_Child] = []
        self._in_use = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._reaping: set[asyncio.Task[None]] = set()
        self._closed = False
        _pools.add(self)

    @property
    def pids(self) -> list[int]:
        """The process ids of the live children, idle or busy."""
        return sorted(c.pid for c in self._children)

    @property
    def busy(self) -> list[int]:
        """The process ids of the children running a call now."""
        return sorted(c.pid for c in self._children if c not in self._idle)

    async def run(self, func: Callable[..., T], *args: Any) -> T:
        """``func(*args)`` in a child process; see the module docstring for what fails how.

        Arguments that do not pickle raise here (``pickle.PicklingError``, ``TypeError``,
        ``AttributeError``) before any child is used."""
        if self._closed:
            raise RuntimeError("the process pool is closed")
        call = pickle.dumps((func, args), protocol=pickle.HIGHEST_PROTOCOL)
        child = await self._acquire()
        healthy = False
        try:
            reply = await _exchange(child.channel, call)
            healthy = True
        except (EOFError, OSError):
            code = await self._discard(child)
            raise ProcessDied(f"the worker's child process {child.pid} died running "
                              f"{_name(func)} ({_exit_status(code)})") from None
        finally:
            try:
                if not healthy:
                    # NOTE: a timeout or a cancel lands here: the child may be mid-call,
                    # and only killing it stops the work.
                    await self._discard(child)
            finally:
                if not healthy:
                    child.channel.close()
                self._release(child if healthy else None)
        return cast(T, _answer(reply))

    async def close(self) -> None:
        """Kill every child (idle or busy) and wait until each is reaped. A call still
        running raises ProcessDied."""
        self._closed = True
        idle, self._idle = self._idle, []
        await asyncio.gather(*(self._discard(c) for c in list(self._children)))
        for child in idle:
            child.channel.close()

    def kill_now(self) -> None:
        """Kill every child without waiting (at interpreter exit)."""
        self._closed = True
        idle, self._idle = self._idle, []
        for child in list(self._children):
            self._children.discard(child)
            child.process.kill()
        for child in idle:
            child.channel.close()

    # -- slots ------------------------------------------------------------------------

    async def _acquire(self) -> _Child:
        while self._in_use >= self.size:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if not waiter.cancelled():
                    self._wake_one()  # NOTE: woken, then cancelled: pass the slot on
                raise
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        self._in_use += 1
        try:
            return self._idle.pop() if self._idle else await self._start()
        except BaseException:
            self._release(None)
            raise

    def _release(self, child: _Child | None) -> None:
        self._in_use -= 1
        if child is not None:
            if self._closed:
                self._children.discard(child)
                child.channel.close()
                child.process.kill()
            else:
                self._idle.append(child)
        self._wake_one()

    def _wake_one(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
                return

    # -- children ---------------------------------------------------------------------

    async def _start(self) -> _Child:
        ours, theirs = socket.socketpair()
        try:
            # NOTE: posix fork+exec (no Python code runs between them), so it is safe from
            # the event loop's thread, and it blocks only until the exec. Not in a thread:
            # the child's death signal fires when the thread that started it ends. Not
            # asyncio's subprocess: that binds the child to one event loop.
            process = subprocess.Popen(  # noqa: ASYNC220
                [sys.executable, "-c", _BOOT, json.dumps(sys.path), str(theirs.fileno()),
                 str(logging.getLogger().getEffectiveLevel()), str(os.getpid())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        child = _Child(process, ours, process.pid)
        self._children.add(child)
        return child

    async def _discard(self, child: _Child) -> int | None:
        """SIGKILL a child (if still alive) and wait until it is reaped; its exit code.

        NOTE: the channel stays open: a call reading it must see EOF, not a closed socket
        (a read pending on a closed socket never ends). Its owner closes it: the call
        that was using the child, or the pool for an idle one."""
        if child in self._children:
            self._children.discard(child)
            child.process.kill()
            child.reaped = asyncio.ensure_future(_reap(child))
            self._reaping.add(child.reaped)
            child.reaped.add_done_callback(self._reaping.discard)
        if child.reaped is not None:
            # NOTE: shielded: a second cancel must not leave the child unreaped.
            await asyncio.shield(child.reaped)
        return child.exitcode


async def _reap(child: _Child) -> None:
    """Wait, without blocking the loop, until the (killed) child is reaped: its pid is
    then gone. A SIGKILLed process exits within milliseconds, so polling is cheap."""
    pause = 0.001
    while (code := child.process.poll()) is None:
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.05)
    child.exitcode = code


async def _exchange(channel: socket.socket, call: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(channel, _HEADER.pack(len(call)))
    await loop.sock_sendall(channel, call)
    (size,) = _HEADER.unpack(await _receive(loop, channel, _HEADER.size))
    return await _receive(loop, channel, size)


async def _receive(loop: asyncio.AbstractEventLoop, channel: socket.socket, size: int
                   ) -> bytes:
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        n = await loop.sock_recv_into(channel, view[got:])
        if n == 0:
            raise EOFError("the child closed its channel")
        got += n
    return bytes(buffer)


def _answer(reply: bytes) -> Any:
    """The call's result, or raise what it raised."""
    kind, *rest = pickle.loads(reply)
    if kind == "ok":
        return rest[0]
    pickled, type_name, message, tb = rest
    error: BaseException | None = None
    if pickled is not None:
        try:
            error = pickle.loads(pickled)
        except Exception:
            error = None
    # NOTE: only an Exception comes back as itself: a child's SystemExit, KeyboardInterrupt
    # or CancelledError must not stop the worker or pose as its own cancellation.
    if not isinstance(error, Exception):
        error = RemoteError(type_name, message)
    raise error from _RemoteTraceback(tb)


def _name(func: Callable[..., Any]) -> str:
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', func)!s}"


def _exit_status(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


# -- at exit ---------------------------------------------------------------------------

_pools: weakref.WeakSet[ProcessPool] = weakref.WeakSet()


@atexit.register
def _kill_all() -> None:
    for pool in list(_pools):
        pool.kill_now()


# -- the child side -------------------------------------------------------------------

def _serve(fd: int, log_level: int, parent: int) -> None:
    """A child's loop: one call at a time until the pool closes the channel."""
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # NOTE: the pool decides when we stop
    _log_to_stderr(log_level)
    with socket.socket(fileno=fd) as channel:
        while True:
            try:
                (size,) = _HEADER.unpack(_read(channel, _HEADER.size))
                reply = _call(_read(channel, size))
                channel.sendall(_HEADER.pack(len(reply)))
                channel.sendall(reply)
            except (EOFError, OSError):
                return


def _read(channel: socket.socket, size: int) -> bytes:
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        n = channel.recv_into(view[got:])
        if n == 0:
            raise EOFError
        got += n
    return bytes(buffer)


def _call(call: bytes) -> bytes:
    try:
        func, args = pickle.loads(call)
        return pickle.dumps(("ok", func(*args)), protocol=pickle.HIGHEST_PROTOCOL)
    except BaseException as exc:  # everything goes back to the caller
        return _error_reply(exc)


def _error_reply(exc: BaseException) -> bytes:
    tb = "".join(traceback.format_exception(exc))
    pickled: bytes | None
    try:
        pickled = pickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL)
        pickle.loads(pickled)  # some exceptions pickle but cannot be rebuilt
    except Exception:
        pickled = None
    return pickle.dumps(("error", pickled, type(exc).__name__, str(exc), tb),
                        protocol=pickle.HIGHEST_PROTOCOL)


def _die_with_parent(parent: int) -> None:
    """NOTE: when the worker dies (even by SIGKILL) the kernel kills the child, so a
    runaway call never outlives its worker. Linux only; elsewhere an orphan finishes its
    call, then exits on EOF. (The signal is sent when the thread that started the child
    ends: children are started from the event loop's thread, which lives as long as the
    worker.)"""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the worker died before prctl took effect
        os._exit(1)


def _log_to_stderr(level: int) -> None:
    """Log lines of calls go, as JSON, to the stderr the child shares with its worker
    (not to the worker's rotated file: several processes must not rotate one file)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
