"""Helpers the tests share: settings for an isolated run, real service processes, and
waiting for jobs."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from services.dev.embedded import free_port, wait_for_port
from shared.apikeys import Scope, create_key
from shared.settings import Settings
from shared.status import TERMINAL

ROOT = Path(__file__).resolve().parent.parent
TEST_WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def isolated_settings(redis_url: str, mongodb_url: str, log_dir: Path, **overrides: Any
                      ) -> Settings:
    """Settings with their own Redis prefix and MongoDB database, and short timings."""
    tag = uuid.uuid4().hex[:10]
    values: dict[str, Any] = dict(
        redis_url=redis_url, mongodb_url=mongodb_url, mongodb_database=f"test_{tag}",
        redis_prefix=f"t{tag}", log_dir=log_dir,
        handler_modules=["services.worker.handlers", "tests.handlers"],
        mongodb_timeout_seconds=2.0, visibility_timeout_seconds=2.0,
        reclaim_interval_seconds=0.5, reconcile_interval_seconds=1.0,
        reconcile_grace_seconds=1.0, retry_base_seconds=0.05, retry_max_seconds=0.2,
        shutdown_grace_seconds=10.0, leader_ttl_seconds=2.0, max_deliveries=3,
        webhook_allowed_hosts=["127.0.0.1"], webhook_sweep_interval_seconds=0.5,
        webhook_retry_schedule=[0.2, 0.2], webhook_timeout_seconds=2.0,
        webhook_secret=TEST_WEBHOOK_SECRET, scrape_allowed_hosts=["127.0.0.1"])
    values.update(overrides)
    return Settings(**values)


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment a service process needs to run with ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBQUEUE_")}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, list):
            value = ",".join(str(v) for v in value)
        env[f"JOBQUEUE_{name.upper()}"] = str(value)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), extra.pop("PYTHONPATH", "")]))
    env.update(extra)
    return env


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    output: Path
    url: str | None = None

    def signal(self, sig: int) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.process.wait()

    def stop(self, timeout: float = 20.0) -> int:
        self.signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise


def spawn(name: str, settings: Settings, output_dir: Path, *args: str,
          env: dict[str, str] | None = None) -> Service:
    """Start ``python -m services.<name>`` as a real process."""
    output_dir.mkdir(parents=True, exist_ok=True)
    output = output_dir / f"{name}-{uuid.uuid4().hex[:6]}.out"
    url = None
    argv = [sys.executable, "-m", f"services.{name}", *args]
    port = None
    if name == "api":
        port = free_port()
        argv += ["--port", str(port)]
        url = f"http://127.0.0.1:{port}"
    with output.open("wb") as out:
        proc = subprocess.Popen(argv, env=env or settings_env(settings), cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    service = Service(name, proc, output, url)
    if port:
        try:
            # NOTE: generous: on a busy machine an API start takes tens of seconds.
            wait_for_port(port, proc, timeout=120)
        except Exception as exc:
            service.kill()
            raise RuntimeError(f"api did not start:\n{output.read_text()}") from exc
    return service


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float,
                     what: str = "condition", interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def wait_finished(jobs: Any, ids: Iterable[str], timeout: float) -> dict[str, Any]:
    """Wait until every job is in a terminal status; return the documents by id."""
    ids = list(ids)
    terminal = [s.value for s in TERMINAL]

    async def done() -> bool:
        finished: int = await jobs.count_documents(
            {"_id": {"$in": ids}, "status": {"$in": terminal}})
        return finished == len(ids)

    try:
        await wait_until(done, timeout, f"{len(ids)} jobs to finish", 0.2)
    except AssertionError as exc:
        docs = {d["_id"]: d async for d in jobs.find({"_id": {"$in": ids}})}
        stuck = [d for d in docs.values() if d["status"] not in terminal]
        summary = Counter(d["status"] for d in docs.values())
        sample = [(d["_id"], [(h["status"], h.get("worker_id")) for h in d["history"]])
                  for d in stuck[:3]]
        raise AssertionError(f"{exc}: {dict(summary)}; unfinished: {sample}") from None
    return {d["_id"]: d async for d in jobs.find({"_id": {"$in": ids}})}


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def submit_many(client: httpx.AsyncClient, bodies: list[dict[str, Any]],
                      concurrency: int = 20) -> list[str]:
    gate = asyncio.Semaphore(concurrency)

    async def one(body: dict[str, Any]) -> str:
        async with gate:
            r = await client.post("/submit-job", json=body)
            assert r.status_code == 202, r.text
            job_id: str = r.json()["jobId"]
            return job_id

    return list(await asyncio.gather(*(one(b) for b in bodies)))


async def submit(api: httpx.AsyncClient, job_type: str, payload: dict[str, Any],
                 **fields: Any) -> str:
    r = await api.post("/jobs", json={"jobType": job_type, "payload": payload, **fields})
    assert r.status_code == 202, r.text
    job_id: str = r.json()["jobId"]
    return job_id


def gone(pid: int) -> bool:
    """True once no process has this id (it exited and was reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def bearer(db: Any, tenant: str, *scopes: str, submit_rate: str | None = None
                 ) -> dict[str, str]:
    """Headers carrying a new API key for ``tenant``, made as ``jobqueue keys create``
    makes it (``scopes`` default to submit)."""
    _, key = await create_key(db, tenant, tuple(Scope(s) for s in scopes), submit_rate)
    return {"Authorization": f"Bearer {key}"}
