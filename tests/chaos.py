"""A seeded chaos run of the whole system, and the invariants it must keep.

Real processes (api, two schedulers, notifier, workers) talk to their own embedded Redis
and MongoDB through fault-injecting proxies, while jobs are submitted and a fault
schedule drawn from ``random.Random(seed)`` kills and restarts processes and servers,
pauses MongoDB and loses replies. Faults fire on progress (every N finished jobs), never
on wall time alone, so a slow machine sees the same storm as a fast one. Then everything
is healed and the run is checked:

- every job the API accepted (202/200) ends COMPLETED (the handlers used here all
  succeed in the end), and a finished status never changes;
- each ``count`` job ran at least once, at most once per recorded claim, and at most
  1 + the faults that can cause a rerun;
- every event of every job with a callback URL was delivered (signed) at least once,
  and first deliveries came in ``seq`` order per job.

Used by ``tests/e2e/test_chaos.py`` (bounded, in the suite) and
``tests/benchmarks/chaos.py`` (longer, many seeds).
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError
from standardwebhooks import Webhook

from services.dev.embedded import free_port, start_mongodb, start_redis, wait_for_port
from shared.settings import Settings
from shared.status import TERMINAL
from tests.faults import FaultProxy, Match
from tests.receiver import Receiver
from tests.support import (
    ROOT,
    TEST_WEBHOOK_SECRET,
    Service,
    isolated_settings,
    lines,
    settings_env,
    spawn,
)

TERMINAL_VALUES = [s.value for s in TERMINAL]
API_START_SECONDS = 120.0
"""How long an API process may take to listen: on a loaded 2-core machine importing
the app alone has taken over 30 s (tests.support.spawn's bound)."""
API_START_ATTEMPTS = 5
"""An API that cannot reach MongoDB at start-up exits; it is started again, as a
supervisor would, and the failure is reported (see ChaosResult.startup_failures)."""
PROCESS_FAULTS = ("kill_worker", "kill_scheduler", "kill_notifier", "kill_api")
STORE_FAULTS = ("restart_redis", "pause_mongodb", "restart_mongodb")
LINK_FAULTS = ("lose_claim_reply", "lose_outcome_reply", "lose_insert_reply",
               "reset_mongodb_links", "reset_redis_links")
FAULTS = PROCESS_FAULTS + STORE_FAULTS + LINK_FAULTS
RERUN_FAULTS = frozenset({"kill_worker", "restart_redis", "pause_mongodb",
                          "restart_mongodb", "reset_mongodb_links", "reset_redis_links"})
"""Faults that may make a job's handler run again (a run whose outcome was never stored,
or an entry lost while its run went on). Lost replies are counted separately, by the
replies the proxy actually swallowed."""
FAULT_WEIGHTS = {"kill_worker": 4, "restart_redis": 2, "pause_mongodb": 2,
                 "lose_claim_reply": 2, "lose_outcome_reply": 2}


@dataclass
class ChaosPlan:
    seed: int
    jobs: int = 300
    workers: int = 3
    concurrency: int = 8
    faults: int = len(FAULTS)
    """Faults in the schedule; the first ``len(FAULTS)`` cover every kind once."""
    window: int = 60
    """Jobs accepted but not yet finished, at most: submission follows progress."""
    max_job_seconds: float = 0.4
    callback_share: float = 0.3
    delayed_share: float = 0.1
    flaky_share: float = 0.05
    settle_seconds: float = 150.0
    """Generous bound for everything to finish once healed (a state is awaited)."""


# -- the fault-injecting proxies, on their own thread ------------------------------------


class ProxyThread:
    """A :class:`FaultProxy` on its own event loop in a thread: it keeps forwarding while
    the driver blocks (starting a process or a server waits synchronously)."""

    def __init__(self, url: str, *, framed: bool) -> None:
        self.proxy = FaultProxy.for_url(url, framed=framed)
        self.armed = True
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="chaos-proxy")
        self._thread.start()
        self._call(self.proxy.start())

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def url_for(self, url: str) -> str:
        return self.proxy.url_for(url)

    @property
    def lost(self) -> int:
        return len(self.proxy.lost)

    def lose_reply_to(self, match: Match, times: int) -> None:
        """Armed until :meth:`disarm`: a trigger left over after healing never fires."""
        self._loop.call_soon_threadsafe(
            self.proxy.lose_reply_to, lambda r: self.armed and match(r), times)

    def disarm(self) -> None:
        self.armed = False

    def reset(self) -> None:
        self._loop.call_soon_threadsafe(self.proxy.reset)

    def close(self) -> None:
        self._call(self.proxy.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def claim_write(request: bytes) -> bool:
    return b"claim\x00" in request and b"$set" in request and b"started_at" in request


def outcome_write(request: bytes) -> bool:
    return b"update\x00" in request and b"COMPLETED" in request and b"$push" in request


def job_insert(request: bytes) -> bool:
    return b"\x02insert\x00\x05\x00\x00\x00jobs\x00" in request


# -- the system under test -----------------------------------------------------------


@dataclass
class Exit:
    service: str
    code: int | None
    tail: str


class Cluster:
    """The servers, proxies and service processes of one run, and the faults on them."""

    def __init__(self, base: Path, plan: ChaosPlan, callback_host: str = "127.0.0.1"
                 ) -> None:
        self.base = base
        self.plan = plan
        self.out = base / "out"
        self.redis = start_redis(base / "redis", persist=False)
        self.mongo = start_mongodb(base / "mongo")
        self.redis_proxy = ProxyThread(self.redis.url, framed=False)
        self.mongo_proxy = ProxyThread(self.mongo.url, framed=True)
        self.settings: Settings = isolated_settings(
            self.redis_proxy.url_for(self.redis.url), self.mongo_proxy.url_for(self.mongo.url),
            base / "logs", webhook_lease_seconds=5.0, webhook_allowed_hosts=[callback_host])
        self.services: dict[str, list[Service]] = {}
        self.exits: list[Exit] = []
        """Service processes that ended without being killed by the schedule."""
        self.startup_failures: list[str] = []
        self.mongo_paused = False

    def _args(self, name: str) -> tuple[str, ...]:
        return ("--concurrency", str(self.plan.concurrency)) if name == "worker" else ()

    def _spawn(self, name: str) -> Service:
        if name != "api":
            return spawn(name, self.settings, self.out, *self._args(name))
        for _ in range(API_START_ATTEMPTS - 1):
            try:
                return self._spawn_api()
            except RuntimeError as exc:
                self.startup_failures.append(str(exc)[-1500:])
        return self._spawn_api()

    def _spawn_api(self) -> Service:
        port = free_port()
        output = self.out / f"api-{port}.out"
        self.out.mkdir(parents=True, exist_ok=True)
        with output.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "services.api", "--port", str(port)],
                env=settings_env(self.settings), cwd=ROOT, stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        service = Service("api", proc, output, f"http://127.0.0.1:{port}")
        try:
            wait_for_port(port, proc, timeout=API_START_SECONDS)
        except Exception as exc:
            service.kill()
            raise RuntimeError(f"api did not start (rc {proc.returncode}):\n"
                               f"{output.read_text()}") from exc
        return service

    async def start(self) -> None:
        counts = {"api": 1, "scheduler": 2, "notifier": 1, "worker": self.plan.workers}
        for name, n in counts.items():
            self.services[name] = list(await asyncio.gather(*(
                asyncio.to_thread(self._spawn, name) for _ in range(n))))

    @property
    def api_url(self) -> str:
        url = self.services["api"][0].url
        assert url is not None
        return url

    async def restart(self, name: str, index: int, down_for: float = 0.0) -> None:
        """SIGKILL one process and start a new one in its place."""
        await asyncio.to_thread(self.services[name][index].kill)
        if down_for:
            await asyncio.sleep(down_for)
        self.services[name][index] = await asyncio.to_thread(self._spawn, name)

    async def watch_exits(self) -> None:
        """Record and replace processes that died by themselves (not by the schedule)."""
        for name, group in self.services.items():
            for i, service in enumerate(group):
                code = service.process.poll()
                if code is not None and code != -signal.SIGKILL:
                    text = service.output.read_text(errors="replace")
                    if f'"{name}.started"' in text:
                        self.exits.append(Exit(name, code, text[-2000:]))
                    else:  # it never got going: MongoDB unreachable or slow at start-up
                        self.startup_failures.append(f"{name} rc={code}: {text[-1500:]}")
                    group[i] = await asyncio.to_thread(self._spawn, name)

    async def restart_redis(self) -> None:
        """SIGKILL Redis and start it again on the same port, empty."""
        self.redis.process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(self.redis.process.wait)
        self.redis = await asyncio.to_thread(start_redis, self.base / "redis",
                                             persist=False, port=self.redis.port)

    async def pause_mongodb(self, seconds: float) -> None:
        self.mongo.process.send_signal(signal.SIGSTOP)
        self.mongo_paused = True
        try:
            await asyncio.sleep(seconds)
        finally:
            self.mongo.process.send_signal(signal.SIGCONT)
            self.mongo_paused = False

    async def restart_mongodb(self, down_for: float) -> None:
        """Stop MongoDB, and start it again on the same port and data directory."""
        await asyncio.to_thread(self.mongo.stop)
        await asyncio.sleep(down_for)
        self.mongo = await asyncio.to_thread(start_mongodb, self.base / "mongo",
                                             port=self.mongo.port)

    def heal(self) -> None:
        self.redis_proxy.disarm()
        self.mongo_proxy.disarm()
        if self.mongo_paused:
            self.mongo.process.send_signal(signal.SIGCONT)

    def close(self) -> None:
        for group in self.services.values():
            for service in group:
                if service.process.poll() is None:
                    service.kill()
        for proxy in (self.redis_proxy, self.mongo_proxy):
            proxy.close()
        self.mongo.process.send_signal(signal.SIGCONT)
        for server in (self.redis, self.mongo):
            server.stop()


async def apply_fault(cluster: Cluster, kind: str, rng: random.Random) -> str:
    """Inflict one fault and heal what it broke (processes come back); describe it."""
    if kind == "kill_worker":
        i = rng.randrange(len(cluster.services["worker"]))
        await cluster.restart("worker", i)
        return f"worker {i} killed"
    if kind == "kill_scheduler":
        i = rng.randrange(2)
        await cluster.restart("scheduler", i)
        return f"scheduler {i} killed"
    if kind == "kill_notifier":
        down = rng.uniform(0.5, 3.0)
        await cluster.restart("notifier", 0, down_for=down)
        return f"notifier killed, down {down:.1f}s"
    if kind == "kill_api":
        await cluster.restart("api", 0)
        return "api killed"
    if kind == "restart_redis":
        await cluster.restart_redis()
        return "redis restarted empty"
    if kind == "pause_mongodb":
        seconds = rng.uniform(1.5, 4.0)
        await cluster.pause_mongodb(seconds)
        return f"mongodb stopped (SIGSTOP) {seconds:.1f}s"
    if kind == "restart_mongodb":
        down = rng.uniform(0.5, 2.0)
        await cluster.restart_mongodb(down)
        return f"mongodb restarted, down {down:.1f}s"
    if kind in ("lose_claim_reply", "lose_outcome_reply", "lose_insert_reply"):
        match = {"lose_claim_reply": claim_write, "lose_outcome_reply": outcome_write,
                 "lose_insert_reply": job_insert}[kind]
        times = rng.randint(1, 2)
        cluster.mongo_proxy.lose_reply_to(match, times)
        return f"{kind} x{times} armed"
    if kind == "reset_mongodb_links":
        cluster.mongo_proxy.reset()
        return "mongodb connections reset"
    if kind == "reset_redis_links":
        cluster.redis_proxy.reset()
        return "redis connections reset"
    raise ValueError(kind)


def fault_schedule(rng: random.Random, plan: ChaosPlan) -> list[tuple[int, str]]:
    """(finished jobs that trigger it, fault kind): every kind once in a random order,
    then weighted draws, spread evenly between 5% and 80% of the jobs."""
    kinds = list(FAULTS)
    rng.shuffle(kinds)
    weights = [FAULT_WEIGHTS.get(k, 1) for k in FAULTS]
    kinds = (kinds + rng.choices(FAULTS, weights, k=max(0, plan.faults - len(kinds))))
    kinds = kinds[:plan.faults]
    lo, hi = 0.05 * plan.jobs, 0.8 * plan.jobs
    step = (hi - lo) / max(1, len(kinds) - 1)
    return [(int(lo + i * step), kind) for i, kind in enumerate(kinds)]


# -- the workload --------------------------------------------------------------------


@dataclass
class JobSpec:
    key: str
    body: dict[str, Any]
    kind: str
    """count | flaky"""
    callback: bool
    flaky_path: Path | None = None
    failures: int = 0


def workload(rng: random.Random, plan: ChaosPlan, runs: Path, flaky_dir: Path, hook_url: str
             ) -> list[JobSpec]:
    specs = []
    for i in range(plan.jobs):
        key = f"chaos-{plan.seed}-{i}"
        callback = rng.random() < plan.callback_share
        body: dict[str, Any] = {"idempotencyKey": key}
        if rng.random() < plan.flaky_share:
            failures = rng.randint(1, 2)
            path = flaky_dir / f"{i}"
            body.update(jobType="flaky", payload={"path": str(path), "failures": failures})
            spec = JobSpec(key, body, "flaky", callback, path, failures)
        else:
            seconds = round(rng.uniform(0.01, plan.max_job_seconds), 3)
            body.update(jobType="count", payload={"path": str(runs), "seconds": seconds})
            spec = JobSpec(key, body, "count", callback)
        if callback:
            body["callbackUrl"] = hook_url
        if rng.random() < plan.delayed_share:
            body["delaySeconds"] = round(rng.uniform(0.2, 2.0), 2)
        specs.append(spec)
    return specs


@dataclass
class Submissions:
    accepted: dict[str, str] = field(default_factory=dict)
    """idempotency key -> job id, for answers 202/200."""
    answers: Counter[str] = field(default_factory=Counter)
    """Every answer: status codes, or the connection error's type."""
    unexpected: list[str] = field(default_factory=list)
    """Answers that are neither accepted nor 503 (a 500, a 4xx, a changed job id)."""
    given_up: list[str] = field(default_factory=list)


async def submit_all(cluster: Cluster, specs: list[JobSpec], subs: Submissions,
                     unfinished: Callable[[], int], plan: ChaosPlan, *,
                     per_job_seconds: float = 90.0, concurrency: int = 8) -> None:
    """Submit every job; 503 or a connection error is "not accepted": retry with the same
    idempotency key. Submission waits while ``window`` jobs are unfinished."""
    todo: asyncio.Queue[JobSpec] = asyncio.Queue()
    for spec in specs:
        todo.put_nowait(spec)

    async def one(client: httpx.AsyncClient, spec: JobSpec) -> None:
        deadline = time.monotonic() + per_job_seconds
        while time.monotonic() < deadline:
            try:
                r = await client.post(f"{cluster.api_url}/submit-job", json=spec.body)
                subs.answers[str(r.status_code)] += 1
                if r.status_code in (200, 202):
                    job_id = r.json()["jobId"]
                    if subs.accepted.setdefault(spec.key, job_id) != job_id:
                        subs.unexpected.append(f"{spec.key}: a second job id {job_id}")
                    return
                if r.status_code != 503:
                    subs.unexpected.append(f"{spec.key}: {r.status_code} {r.text[:300]}")
                    return
            except httpx.HTTPError as exc:
                subs.answers[type(exc).__name__] += 1
            await asyncio.sleep(0.2)
        subs.given_up.append(spec.key)

    async def loop() -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            while not todo.empty():
                while unfinished() >= plan.window:
                    await asyncio.sleep(0.05)
                await one(client, todo.get_nowait())

    await asyncio.gather(*(loop() for _ in range(concurrency)))


# -- observing -----------------------------------------------------------------------


class Observer:
    """Polls MongoDB directly (not through the proxies) for finished jobs; notes every
    finished status that changes or stops being finished."""

    def __init__(self, mongodb_url: str, database: str) -> None:
        self.client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            mongodb_url, tz_aware=True, serverSelectionTimeoutMS=2000,
            connectTimeoutMS=2000, socketTimeoutMS=5000)
        self.jobs = self.client[database]["jobs"]
        self.finished: dict[str, str] = {}
        self.violations: list[str] = []

    async def poll(self) -> None:
        try:
            seen = {d["_id"]: d["status"] async for d in self.jobs.find(
                {"status": {"$in": TERMINAL_VALUES}}, {"status": 1})}
        except PyMongoError:
            return  # MongoDB is down or paused: look again later
        for job_id, status in seen.items():
            first = self.finished.setdefault(job_id, status)
            if first != status:
                self.violations.append(f"{job_id}: finished {first}, later {status}")
        for job_id in set(self.finished) - set(seen):
            self.violations.append(f"{job_id}: finished {self.finished[job_id]}, "
                                   "later not finished")
            self.finished.pop(job_id)

    async def close(self) -> None:
        await self.client.close()


# -- the run and its checks ----------------------------------------------------------


@dataclass
class Fault:
    at: int
    """Finished jobs when it struck."""
    kind: str
    what: str
    started: float = 0.0
    """Seconds since the chaos phase began."""
    took: float = 0.0


@dataclass
class ChaosResult:
    seed: int
    timings: dict[str, float] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    lost_replies: int = 0
    submissions: Submissions = field(default_factory=Submissions)
    statuses: Counter[str] = field(default_factory=Counter)
    executions: Counter[int] = field(default_factory=Counter)
    """How many count jobs ran n times, by n."""
    webhooks: dict[str, int] = field(default_factory=dict)
    exits: list[Exit] = field(default_factory=list)
    startup_failures: list[str] = field(default_factory=list)
    """Processes that exited at start-up (MongoDB unreachable or slow then)."""
    violations: list[str] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)

    def summary(self) -> str:
        subs = self.submissions
        head = (f"seed {self.seed}: {len(subs.accepted)} accepted, {dict(self.statuses)}, "
                f"executions {dict(sorted(self.executions.items()))}, "
                f"webhooks {self.webhooks}, lost replies {self.lost_replies}, "
                f"answers {dict(subs.answers)}, timings "
                + ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items()))
        parts = [head, "faults: " + "; ".join(
            f"@{f.at} (t={f.started:.1f}s, {f.took:.1f}s) {f.what}" for f in self.faults)]
        parts += [f"exited by itself: {e.service} rc={e.code}\n{e.tail}" for e in self.exits]
        parts += [f"start-up failed: {f[-600:]}" for f in self.startup_failures]
        parts += [f"VIOLATION {v}" for v in self.violations[:40]]
        parts += self.evidence[:10]
        return "\n".join(parts)


async def run_chaos(plan: ChaosPlan, base: Path, receiver: Receiver) -> ChaosResult:
    """One seeded run: start, submit under faults, heal, settle, check."""
    rng = random.Random(plan.seed)
    result = ChaosResult(plan.seed)
    t0 = time.monotonic()
    hook_url = receiver.on("/hook", 204)
    runs = base / "runs"
    (base / "flaky").mkdir(parents=True, exist_ok=True)
    specs = workload(rng, plan, runs, base / "flaky", hook_url)
    schedule = fault_schedule(rng, plan)
    cluster = await asyncio.to_thread(Cluster, base, plan)
    observer = Observer(cluster.mongo.url, cluster.settings.mongodb_database)
    try:
        await cluster.start()
        result.timings["start"] = time.monotonic() - t0
        t1 = time.monotonic()
        subs = result.submissions

        def done() -> int:
            return sum(1 for j in subs.accepted.values() if j in observer.finished)

        def unfinished() -> int:
            return len(subs.accepted) - done()

        submitting = asyncio.create_task(submit_all(cluster, specs, subs, unfinished, plan))
        stop_polling = asyncio.Event()

        async def poll_loop() -> None:
            while not stop_polling.is_set():
                await observer.poll()
                await cluster.watch_exits()
                await asyncio.sleep(0.3)

        polling = asyncio.create_task(poll_loop())
        try:
            for threshold, kind in schedule:
                while done() < threshold:
                    if submitting.done() and unfinished() == 0:
                        break  # fewer jobs accepted than planned: nothing left to wait on
                    await asyncio.sleep(0.1)
                at, began = done(), time.monotonic()
                what = await apply_fault(cluster, kind, rng)
                result.faults.append(Fault(at, kind, what, began - t1,
                                           time.monotonic() - began))
            await submitting
            result.timings["chaos"] = time.monotonic() - t1
            cluster.heal()
            t2 = time.monotonic()
            deadline = time.monotonic() + plan.settle_seconds
            while unfinished() and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            result.timings["settle"] = time.monotonic() - t2
            t3 = time.monotonic()
            await settle_webhooks(observer, specs, subs, receiver, hook_url,
                                  time.monotonic() + 60)
            result.timings["webhooks"] = time.monotonic() - t3
        finally:
            stop_polling.set()
            await polling
            if not submitting.done():
                submitting.cancel()
        result.lost_replies = cluster.redis_proxy.lost + cluster.mongo_proxy.lost
        result.exits = cluster.exits
        result.startup_failures = cluster.startup_failures
        await check(result, observer, specs, runs, receiver, hook_url)
    finally:
        await observer.close()
        await asyncio.to_thread(cluster.close)
        result.timings["total"] = time.monotonic() - t0
    return result


def whole(receiver: Receiver, path: str) -> list[Any]:
    """The requests received in full: a notifier killed mid-request leaves a body
    shorter than its content-length, which no receiver would count as delivered."""
    return [r for r in receiver.at(path)
            if len(r.body) == int(r.headers.get("content-length") or -1)]


def delivered(receiver: Receiver, path: str) -> list[dict[str, Any]]:
    """Every webhook received, in arrival order, each verified with the reference
    Standard Webhooks library (a bad signature raises)."""
    hook = Webhook(TEST_WEBHOOK_SECRET)
    out = []
    for r in whole(receiver, path):
        event: dict[str, Any] = hook.verify(r.body, r.headers)
        if r.headers["webhook-id"] != event["id"]:
            raise AssertionError(f"webhook-id {r.headers['webhook-id']} for {event['id']}")
        out.append(event)
    return out


async def settle_webhooks(observer: Observer, specs: list[JobSpec], subs: Submissions,
                          receiver: Receiver, hook_url: str, deadline: float) -> None:
    """Wait until every event of every accepted job with a callback was delivered."""
    ids = [subs.accepted[s.key] for s in specs if s.callback and s.key in subs.accepted]
    path = "/" + hook_url.rsplit("/", 1)[1]
    while time.monotonic() < deadline:
        got = {r.headers.get("webhook-id") for r in whole(receiver, path)}
        try:
            wanted = {h["event_id"] async for d in observer.jobs.find(
                {"_id": {"$in": ids}}, {"history.event_id": 1}) for h in d["history"]}
            if wanted <= got:
                return
        except PyMongoError:
            pass  # look again
        await asyncio.sleep(0.3)


async def check(result: ChaosResult, observer: Observer, specs: list[JobSpec], runs: Path,
                receiver: Receiver, hook_url: str) -> None:
    subs = result.submissions
    bad = result.violations
    bad += [f"submit answered {u}" for u in subs.unexpected]
    bad += [f"never accepted in 90s of retries: {k}" for k in subs.given_up]
    bad += observer.violations
    ids = list(subs.accepted.values())
    docs = {d["_id"]: d async for d in observer.jobs.find({"_id": {"$in": ids}})}
    result.statuses = Counter(docs[i]["status"] if i in docs else "MISSING" for i in ids)
    for spec in specs:
        job_id = subs.accepted.get(spec.key)
        doc = docs.get(job_id or "")
        if job_id is None:
            continue
        if doc is None:
            bad.append(f"{job_id} ({spec.key}) accepted but not in MongoDB")
            continue
        history = [h["status"] for h in doc["history"]]
        if doc["status"] != "COMPLETED":
            bad.append(f"{job_id} ended {doc['status']}: {history} error={doc.get('error')}")
        ends = [s for s in history if s in TERMINAL_VALUES]
        if len(ends) > 1:
            bad.append(f"{job_id} finished more than once: {history}")
        if spec.flaky_path and len(lines(spec.flaky_path)) < spec.failures + 1:
            bad.append(f"{job_id}: flaky completed after fewer runs than its failures")

    # Executions of count jobs, counted outside the system.
    ran = Counter(lines(runs))
    rerun_faults = sum(1 for f in result.faults if f.kind in RERUN_FAULTS)
    bound = 1 + rerun_faults + result.lost_replies
    for spec in specs:
        job_id = subs.accepted.get(spec.key)
        if spec.kind != "count" or job_id is None or job_id not in docs:
            continue
        n = ran[job_id]
        result.executions[n] += 1
        claims = sum(1 for h in docs[job_id]["history"] if h["status"] == "PROCESSING")
        if n < 1:
            bad.append(f"{job_id} never ran: {docs[job_id]['status']}")
        if n > claims:
            bad.append(f"{job_id} ran {n} times but was claimed {claims} times")
        if n > bound:
            bad.append(f"{job_id} ran {n} times, over 1 + {rerun_faults} rerun faults + "
                       f"{result.lost_replies} lost replies")
        if n > 1:
            result.evidence.append(f"{job_id} ran {n}x: " + ", ".join(
                f"{h['status']}@{h.get('worker_id')}" for h in docs[job_id]["history"]))

    check_webhooks(result, specs, docs, receiver, hook_url)


def check_webhooks(result: ChaosResult, specs: list[JobSpec], docs: dict[str, Any],
                   receiver: Receiver, hook_url: str) -> None:
    subs = result.submissions
    bad = result.violations
    path = "/" + hook_url.rsplit("/", 1)[1]
    try:
        events = delivered(receiver, path)
    except Exception as exc:  # a bad signature: the verifier's own exception type
        bad.append(f"a webhook failed signature verification: {exc!r}")
        return
    first: dict[str, list[dict[str, Any]]] = defaultdict(list)
    seen: set[str] = set()
    for event in events:
        if event["id"] not in seen:
            seen.add(event["id"])
            first[event["jobId"]].append(event)
    result.webhooks = {"received": len(events), "events": len(seen),
                       "duplicates": len(events) - len(seen),
                       "cut_short": len(receiver.at(path)) - len(events)}
    for spec in specs:
        job_id = subs.accepted.get(spec.key)
        if not spec.callback or job_id is None or job_id not in docs:
            continue
        history = docs[job_id]["history"]
        seq_of = {h["event_id"]: i + 1 for i, h in enumerate(history)}
        missing = [h["status"] for h in history if h["event_id"] not in seen]
        if missing:
            bad.append(f"{job_id}: events never delivered: {missing} "
                       f"(history {[h['status'] for h in history]})")
        order = [e["seq"] for e in first[job_id]]
        if order != sorted(order) or len(set(order)) != len(order):
            bad.append(f"{job_id}: first deliveries out of seq order: {order}")
        wrong = [e["id"] for e in first[job_id] if seq_of.get(e["id"]) != e["seq"]]
        if wrong:
            bad.append(f"{job_id}: delivered events with a seq unlike the history: {wrong}")


async def run_seed(plan: ChaosPlan, base: Path) -> ChaosResult:
    """:func:`run_chaos` with its own webhook receiver."""
    from tests.receiver import receiver

    with receiver() as hooks:
        return await run_chaos(plan, base, hooks)
