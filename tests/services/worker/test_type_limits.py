"""Per-job-type limits across all workers: at most N running at once, at most a rate
started. Real worker processes and in-process workers, on real servers. Test types
``capped`` (concurrency=2) and ``metered`` (rate="5/s") are in tests/handlers.py."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel, ValidationError

from services.runtime import Stores
from services.scheduler.scheduler import Scheduler
from shared.jobtypes import REGISTRY, job_type
from shared.keys import type_reserved_key, type_slots_key, type_waiting_key
from shared.queue import scheduled_member
from shared.ratelimit import Rate
from shared.settings import Settings, TypeLimitSetting
from shared.typelimits import TypeLimit, effective_limits
from tests.support import (
    Service,
    lines,
    settings_env,
    spawn,
    submit_many,
    wait_finished,
    wait_until,
)

HISTORY = ["QUEUED", "PROCESSING", "COMPLETED"]


@pytest.fixture
async def workers(settings: Settings, tmp_path: Path
                  ) -> AsyncIterator[Callable[..., Service]]:
    """Start real worker processes; all are stopped (or killed) at the end."""
    started: list[Service] = []

    def start(*args: str, **env: str) -> Service:
        started.append(spawn("worker", settings, tmp_path / "services", *args,
                             env=settings_env(settings, **env)))
        return started[-1]

    yield start
    for service in started:
        if service.process.poll() is None:
            service.stop(30)


def runs(path: Path) -> list[tuple[str, str, float, str]]:
    """The capped handler's records: (start|end, job id, time, worker id)."""
    return [(kind, job, float(at), worker)
            for kind, job, at, worker in (line.split() for line in lines(path))]


def most_at_once(records: list[tuple[str, str, float, str]]) -> int:
    """The most runs between their start and end records at any moment."""
    running = peak = 0
    # An end and a start at the same instant: the end first.
    for kind, *_ in sorted(records, key=lambda r: (r[2], r[0] == "start")):
        running += 1 if kind == "start" else -1
        peak = max(peak, running)
    return peak


async def sample_processing(stores: Stores, job_type: str, stop: asyncio.Event,
                            seen: list[int]) -> None:
    while not stop.is_set():
        seen.append(await stores.jobs.count_documents(
            {"job_type": job_type, "status": "PROCESSING"}))
        await asyncio.sleep(0.01)


def assert_ran_once(docs: dict[str, Any]) -> None:
    for doc in docs.values():
        assert doc["status"] == "COMPLETED", doc["_id"]
        assert doc["retries"] == 0 and doc["attempt"] == 1
        assert [h["status"] for h in doc["history"]] == HISTORY


async def test_a_concurrency_cap_holds_across_worker_processes(
        api: httpx.AsyncClient, stores: Stores, scheduler: Scheduler, workers: Any,
        tmp_path: Path) -> None:
    path = tmp_path / "runs"
    for _ in range(3):
        workers("--concurrency", "4")  # twelve slots, for a type capped at two
    ids = await submit_many(api, [{"jobType": "capped", "payload": {
        "path": str(path), "seconds": 0.3}} for _ in range(12)])
    stop, seen = asyncio.Event(), []
    sampler = asyncio.create_task(sample_processing(stores, "capped", stop, seen))
    try:
        docs = await wait_finished(stores.jobs, ids, 120)
    finally:
        stop.set()
        await sampler
    assert_ran_once(docs)
    records = runs(path)
    assert sorted(job for kind, job, _, _ in records if kind == "start") == sorted(ids)
    assert most_at_once(records) == 2
    assert max(seen) <= 2
    # Nothing is left holding a slot once the runs ended.
    assert await stores.redis.zcard(type_slots_key(stores.queue.keys.prefix, "capped")) == 0


async def test_a_rate_limit_holds_across_workers(
        api: httpx.AsyncClient, stores: Stores, scheduler: Scheduler, background: Any,
        tmp_path: Path) -> None:
    path = tmp_path / "starts"
    background(concurrency=8)
    background(concurrency=8)
    ids = await submit_many(api, [{"jobType": "metered", "payload": {"path": str(path)}}
                                  for _ in range(20)])
    docs = await wait_finished(stores.jobs, ids, 60)
    assert_ran_once(docs)
    assert len(lines(path)) == 20
    # When each was claimed (by the clock both workers share), right after admission.
    starts = sorted(doc["started_at"].timestamp() for doc in docs.values())
    # "5/s": a burst of five, then one every 0.2 s. Any stretch of starts fits that
    # budget (one extra for the limiter's millisecond rounding).
    for i in range(len(starts)):
        for j in range(i, len(starts)):
            assert j - i + 1 <= 5 + 5 * (starts[j] - starts[i]) + 1, (i, j)
    assert starts[-1] - starts[0] >= (20 - 5) / 5 - 0.3


async def test_a_capped_backlog_does_not_slow_other_types(
        api: httpx.AsyncClient, stores: Stores, scheduler: Scheduler, background: Any,
        tmp_path: Path) -> None:
    background(concurrency=4)
    path = tmp_path / "runs"
    capped = await submit_many(api, [{"jobType": "capped", "payload": {
        "path": str(path), "seconds": 1.5}} for _ in range(10)])
    await wait_until(lambda: _started(path, 2), 30, "two capped jobs to start")
    [free] = await submit_many(api, [{"jobType": "echo", "payload": {"text": "free"}}])
    doc = (await wait_finished(stores.jobs, [free], 30))[free]
    assert doc["status"] == "COMPLETED"
    # The free job ran while the capped backlog was still waiting its turn.
    waiting = await stores.jobs.count_documents(
        {"_id": {"$in": capped}, "status": "QUEUED"})
    assert waiting >= 4
    restored = []

    async def drained() -> bool:
        # Held-back jobs wait in the delayed set while QUEUED: not lost to reconcile.
        restored.append(await scheduler.reconcile())
        return await stores.jobs.count_documents(
            {"_id": {"$in": capped}, "status": "COMPLETED"}) == len(capped)

    await wait_until(drained, 60, "the capped backlog to drain", 0.2)
    assert sum(restored) == 0
    docs = await wait_finished(stores.jobs, capped, 10)
    assert_ran_once(docs)
    assert most_at_once(runs(path)) == 2


async def test_a_dead_workers_slots_expire_and_held_jobs_can_be_cancelled(
        api: httpx.AsyncClient, stores: Stores, scheduler: Scheduler, workers: Any,
        background: Any, settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "runs"
    keys = stores.queue.keys
    slots = type_slots_key(keys.prefix, "capped")
    doomed = workers("--concurrency", "4")
    long = await submit_many(api, [{"jobType": "capped", "payload": {
        "path": str(path), "seconds": 60, "delay": 0.1}} for _ in range(2)])
    await wait_until(lambda: _started(path, 2), 60, "the long jobs to start")
    assert set(await stores.redis.zrange(slots, 0, -1)) == set(long)

    background(concurrency=4)  # a second worker, with free slots: it must wait too
    later = await submit_many(api, [{"jobType": "capped", "payload": {
        "path": str(path), "seconds": 3}} for _ in range(3)])

    async def held_back() -> bool:
        scores = [await stores.redis.zscore(keys.scheduled,
                                            scheduled_member(job, "default"))
                  for job in later]
        return all(score is not None for score in scores)

    await wait_until(held_back, 30, "the later jobs to be held back", 0.01)
    assert len(runs(path)) == 2  # only the long jobs started
    cancelled = later.pop()
    r = await api.post(f"/jobs/{cancelled}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "CANCELLED"

    killed_at = time.time()
    doomed.kill()

    # Its slots' leases (the visibility timeout) run out: the later jobs start. Then the
    # dead runs are reclaimed; their takeovers wait for the cap too, and complete.
    await wait_until(lambda: _started(path, 4), 60, "the later jobs to start")
    reclaimed, restored = [], []

    async def all_done() -> bool:
        reclaimed.append(await scheduler.reclaim())
        restored.append(await scheduler.reconcile())
        return await stores.jobs.count_documents(
            {"_id": {"$in": later + long}, "status": "COMPLETED"}) == 4

    await wait_until(all_done, 90, "the later jobs and the taken-over runs to complete",
                     0.2)
    docs = await wait_finished(stores.jobs, later + long, 10)
    # A held-back takeover waits with its worker (heartbeated), not lost in between.
    assert sum(reclaimed) == 2 and sum(restored) == 0
    assert_ran_once({job: docs[job] for job in later})
    for job in long:
        assert docs[job]["attempt"] == 2 and docs[job]["retries"] == 0
        assert [h["status"] for h in docs[job]["history"]] == [
            "QUEUED", "PROCESSING", "PROCESSING", "COMPLETED"]
    records = runs(path)
    dead = {worker for _, _, _, worker in records[:2]}  # the long jobs' first runs
    alive = [r for r in records if r[3] not in dead]
    assert min(at for kind, job, at, _ in alive if kind == "start") >= killed_at
    assert most_at_once(alive) <= 2
    assert cancelled not in {job for _, job, _, _ in records}
    assert (await stores.jobs.find_one({"_id": cancelled}))["status"] == "CANCELLED"


def holds(caplog: pytest.LogCaptureFixture) -> int:
    """How often workers held a job back (handed it back to the delayed set)."""
    return sum(1 for r in caplog.records if r.getMessage() == "job.held_back")


async def assert_no_line_left(stores: Stores, job_type: str) -> None:
    prefix = stores.queue.keys.prefix
    for key in (type_slots_key(prefix, job_type), type_reserved_key(prefix, job_type),
                type_waiting_key(prefix, job_type)):
        assert await stores.redis.zcard(key) == 0, key


async def test_a_capped_backlog_sleeps_until_a_slot_frees(
        api: httpx.AsyncClient, stores: Stores, scheduler: Scheduler, background: Any,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="services.worker.worker")
    path = tmp_path / "runs"
    background(concurrency=8)
    background(concurrency=8)
    began = time.monotonic()
    ids = await submit_many(api, [{"jobType": "capped", "payload": {
        "path": str(path), "seconds": 0.2}} for _ in range(40)])
    docs = await wait_finished(stores.jobs, ids, 180)
    elapsed = time.monotonic() - began
    assert_ran_once(docs)
    assert most_at_once(runs(path)) == 2
    held = holds(caplog)
    print(f"\n40 capped jobs: {elapsed:.2f} s, {held} holds")
    # Each of the 38 held back is held once, then woken (a few may come back by their
    # safety net on a slow machine and wait once more); trying held jobs again every
    # second or so cycled each of them through its lane several times.
    assert 38 <= held <= 2 * len(ids)
    await assert_no_line_left(stores, "capped")


async def test_held_jobs_start_in_the_order_they_were_submitted(
        api: httpx.AsyncClient, stores: Stores, scheduler: Scheduler, background: Any,
        tmp_path: Path) -> None:
    path = tmp_path / "runs"
    background(concurrency=4)
    ids = await submit_many(api, [{"jobType": "capped", "payload": {
        "path": str(path), "seconds": 0.1}} for _ in range(20)], concurrency=1)
    assert_ran_once(await wait_finished(stores.jobs, ids, 120))
    assert [job for kind, job, _, _ in runs(path) if kind == "start"] == ids
    await assert_no_line_left(stores, "capped")


async def test_one_tenants_capped_backlog_does_not_hold_back_another_tenant(
        api: httpx.AsyncClient, stores: Stores, scheduler: Scheduler, background: Any,
        make_key: Any, tmp_path: Path) -> None:
    """The line of a capped type takes tenants in turn: alice's one job waits about one
    turn, not behind bob's whole backlog."""
    bob, alice = await make_key("bob"), await make_key("alice")
    path = tmp_path / "runs"
    background(concurrency=4)
    r = await api.post("/jobs/batch", headers=bob, json={"jobs": [
        {"jobType": "capped", "payload": {"path": str(path), "seconds": 0.2}}
        for _ in range(30)]})
    assert r.status_code == 202, r.text
    backlog = [j["jobId"] for j in r.json()["jobs"]]
    waiting = type_waiting_key(stores.queue.keys.prefix, "capped")

    async def bob_in_line() -> bool:
        return await stores.redis.zcard(waiting) >= 20

    await wait_until(bob_in_line, 60, "bob's backlog to wait in line", 0.01)
    started_before = sum(1 for kind, *_ in runs(path) if kind == "start")
    r = await api.post("/jobs", headers=alice, json={
        "jobType": "capped", "payload": {"path": str(path), "seconds": 0.2}})
    assert r.status_code == 202, r.text
    mine = r.json()["jobId"]
    assert_ran_once(await wait_finished(stores.jobs, [*backlog, mine], 180))
    starts = [job for kind, job, _, _ in runs(path) if kind == "start"]
    # Ahead of her at most: what had started, the two slots' woken jobs, and bob's head
    # of line (tenants take turns). Behind bob's backlog she would start last.
    assert starts.index(mine) <= started_before + 3, (starts.index(mine), started_before)
    await assert_no_line_left(stores, "capped")


async def test_cancelled_held_jobs_leave_the_line(
        api: httpx.AsyncClient, stores: Stores, scheduler: Scheduler, background: Any,
        tmp_path: Path) -> None:
    """Held-back jobs cancelled while they wait are not woken for a freed slot: the next
    job starts as soon as the running ones end, not after their reservations run out."""
    path = tmp_path / "runs"
    background(concurrency=4)
    long = await submit_many(api, [{"jobType": "capped", "payload": {
        "path": str(path), "seconds": 2}} for _ in range(2)])
    await wait_until(lambda: _started(path, 2), 60, "the long jobs to start")
    held = await submit_many(api, [{"jobType": "capped", "payload": {
        "path": str(path), "seconds": 0.1}} for _ in range(6)])
    prefix = stores.queue.keys.prefix
    waiting = type_waiting_key(prefix, "capped")

    async def in_line() -> bool:
        return await stores.redis.zcard(waiting) == len(held)

    await wait_until(in_line, 30, "the held jobs to wait in line", 0.01)
    for job in held:
        r = await api.post(f"/jobs/{job}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "CANCELLED", r.text
    assert await stores.redis.zcard(waiting) == 0
    members = await stores.redis.zrange(stores.queue.keys.scheduled, 0, -1)
    assert not [m for m in members if m.rsplit(":", 1)[-1] in held]
    after = await submit_many(api, [{"jobType": "capped", "payload": {
        "path": str(path), "seconds": 0.1}}])
    await wait_finished(stores.jobs, [*long, *after], 60)
    assert await stores.redis.zcard(type_reserved_key(prefix, "capped")) == 0
    assert [job for kind, job, _, _ in runs(path) if kind == "start"][2:] == after


async def test_held_jobs_complete_after_a_worker_died_holding_the_slots(
        api: httpx.AsyncClient, stores: Stores, scheduler: Scheduler, workers: Any,
        background: Any, tmp_path: Path) -> None:
    path = tmp_path / "runs"
    doomed = workers("--concurrency", "4")
    long = await submit_many(api, [{"jobType": "capped", "payload": {
        "path": str(path), "seconds": 60, "delay": 0.1}} for _ in range(2)])
    await wait_until(lambda: _started(path, 2), 60, "the long jobs to start")
    background(concurrency=4)
    held = await submit_many(api, [{"jobType": "capped", "payload": {
        "path": str(path), "seconds": 0.1}} for _ in range(10)])
    waiting = type_waiting_key(stores.queue.keys.prefix, "capped")

    async def in_line() -> bool:
        return await stores.redis.zcard(waiting) == len(held)

    await wait_until(in_line, 30, "the later jobs to wait in line", 0.01)
    doomed.kill()  # its slots are never released, so no release wakes the line

    # The dead runs' leases run out; the held jobs' safety nets bring them back, the
    # first to come finds the slots free and wakes the line.
    reclaimed = []

    async def all_done() -> bool:
        reclaimed.append(await scheduler.reclaim())
        return await stores.jobs.count_documents(
            {"_id": {"$in": held + long}, "status": "COMPLETED"}) == len(held + long)

    await wait_until(all_done, 120, "the held jobs and the taken-over runs to complete",
                     0.2)
    docs = await wait_finished(stores.jobs, held + long, 10)
    assert_ran_once({job: docs[job] for job in held})
    assert sum(reclaimed) == 2
    records = runs(path)
    dead = {worker for _, _, _, worker in records[:2]}
    assert most_at_once([r for r in records if r[3] not in dead]) <= 2
    await assert_no_line_left(stores, "capped")


async def _started(path: Path, count: int) -> bool:
    return sum(1 for kind, *_ in runs(path) if kind == "start") >= count


# -- configuration ---------------------------------------------------------------------


class Empty(BaseModel):
    pass


@pytest.mark.parametrize(("limits", "message"), [
    ({"concurrency": 0}, "concurrency must be a positive integer"),
    ({"concurrency": 1.5}, "concurrency must be a positive integer"),
    ({"rate": "10/d"}, "COUNT/PERIOD")])
def test_bad_limits_are_refused_at_registration(limits: dict[str, Any], message: str
                                                ) -> None:
    with pytest.raises(ValueError, match=message):
        job_type("badLimits", payload=Empty, **limits)
    assert "badLimits" not in REGISTRY


def test_settings_override_the_decorator_per_field() -> None:
    overrides = Settings.model_validate({"type_limits": {
        "capped": {"rate": "3/m"},
        "metered": {"rate": None},
        "count": {"concurrency": 1}}}).type_limits
    limits = effective_limits(REGISTRY, overrides)
    assert limits["capped"] == TypeLimit(2, Rate(3, 60.0))  # concurrency kept
    assert "metered" not in limits  # a null lifts the decorator's limit
    assert limits["count"] == TypeLimit(1, None)
    assert "echo" not in limits


def test_bad_limit_settings_fail_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBQUEUE_TYPE_LIMITS", json.dumps(
        {"sendEmail": {"concurrency": 5, "rate": "10 per second"}}))
    with pytest.raises(ValidationError, match=r"type_limits\.sendEmail\.rate"):
        Settings()
    monkeypatch.setenv("JOBQUEUE_TYPE_LIMITS", '{"sendEmail": {"concurency": 5}}')
    with pytest.raises(ValidationError, match="concurency"):
        Settings()
    monkeypatch.setenv("JOBQUEUE_TYPE_LIMITS", json.dumps(
        {"sendEmail": {"concurrency": 5, "rate": "10/s"}}))
    assert Settings().type_limits == {"sendEmail": TypeLimitSetting(concurrency=5,
                                                                    rate="10/s")}
