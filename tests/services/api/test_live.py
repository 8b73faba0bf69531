"""Live status over SSE: one subscriber per API process fanned out to every stream.

Streams need a real HTTP server (httpx's ASGI transport buffers whole responses), so
these tests serve the app with uvicorn in the test's own event loop, which also lets
them look at the fan-out's registry, or spawn ``jobqueue api`` as a real process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from redis.asyncio import Redis

from services.api.app import EXIT_HELPER_CRASHED, create_app
from services.api.watchers import Watch, Watchers
from services.dev.embedded import free_port, wait_for_port
from services.runtime import Stores
from shared import transitions
from shared.settings import Settings
from tests.support import ROOT, bearer, settings_env, spawn, submit, wait_until

KEEPALIVE = 0.3


class QuietServer(uvicorn.Server):
    """uvicorn in the test's loop, leaving the test process's signal handlers alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Served:
    def __init__(self, app: FastAPI, url: str) -> None:
        self.app, self.url = app, url

    @property
    def watchers(self) -> Watchers:
        watchers: Watchers = self.app.state.context.watchers
        return watchers


@contextlib.asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[Served]:
    app = create_app(settings)
    port = free_port()
    server = QuietServer(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                        lifespan="on", timeout_graceful_shutdown=1))
    task = asyncio.create_task(server.serve())

    async def started() -> bool:
        return server.started

    await wait_until(started, 30, "the API to start", 0.02)
    try:
        yield Served(app, f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


@pytest.fixture
def live_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"sse_keepalive_seconds": KEEPALIVE})


@pytest.fixture
async def served(live_settings: Settings) -> AsyncIterator[Served]:
    async with serve(live_settings) as s:
        await wait_until(lambda: _true(s.watchers.subscribed), 10, "the subscription")
        yield s


async def _true(value: bool) -> bool:
    return value


class Stream:
    """One open SSE stream, read in the background into a list of (event, data)."""

    def __init__(self, client: httpx.AsyncClient, job_id: str) -> None:
        self.client, self.job_id = client, job_id
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.comments: list[str] = []
        self.status_code: int | None = None
        self.opened = asyncio.Event()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async with self.client.stream("GET", f"/jobs/{self.job_id}/events") as response:
            self.status_code = response.status_code
            self.opened.set()
            name = None
            async for line in response.aiter_lines():
                if line.startswith(":"):
                    self.comments.append(line)
                elif line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: ") and name:
                    self.events.append((name, json.loads(line[6:])))

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.events]

    async def closed(self, timeout: float = 20) -> list[str]:
        await asyncio.wait_for(self.task, timeout)
        return self.names

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def open_stream(client: httpx.AsyncClient, job_id: str) -> Stream:
    """A stream whose `status` event arrived (so it is registered with the fan-out)."""
    stream = Stream(client, job_id)

    async def has_status() -> bool:
        if stream.task.done():
            stream.task.result()
            return True
        return bool(stream.events)

    await wait_until(has_status, 20, f"the status event of {job_id}", 0.02)
    return stream


async def scheduled_job(client: httpx.AsyncClient) -> str:
    return await submit(client, "echo", {"text": "x"}, delaySeconds=3600)


async def test_status_first_then_each_transition_then_closed(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.url, timeout=30) as client:
        job = await scheduled_job(client)
        stream = await open_stream(client, job)
        assert stream.events[0] == ("status", stream.events[0][1])
        assert stream.events[0][1]["status"] == "SCHEDULED"
        assert (await client.post(f"/jobs/{job}/cancel")).status_code == 200
        assert await stream.closed() == ["status", "job.cancelled"]
        assert stream.events[1][1]["seq"] == stream.events[0][1]["seq"] + 1
        again = await open_stream(client, job)  # already finished: status, then closed
        assert await again.closed() == ["status"]


async def test_keep_alive_comments_on_a_quiet_stream(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.url, timeout=30) as client:
        stream = await open_stream(client, await scheduled_job(client))
        await wait_until(lambda: _true(len(stream.comments) >= 2), 20, "two keep-alives")
        assert set(stream.comments) == {": keep-alive"}
        await stream.close()


async def test_many_streams_share_one_redis_subscription(served: Served,
                                                         stores: Stores) -> None:
    channel = stores.queue.keys.events_channel
    async with httpx.AsyncClient(base_url=served.url, timeout=30,
                                 limits=httpx.Limits(max_connections=100)) as client:
        job = await scheduled_job(client)
        streams = [await open_stream(client, job) for _ in range(40)]
        [(_, subscribers)] = await stores.redis.pubsub_numsub(channel)
        assert subscribers == 1
        assert len(served.watchers) == 40 and served.watchers.jobs_watched == 1
        assert (await client.post(f"/jobs/{job}/cancel")).status_code == 200
        for stream in streams:
            assert await stream.closed() == ["status", "job.cancelled"]


async def test_closed_streams_leave_nothing_behind(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.url, timeout=30,
                                 limits=httpx.Limits(max_connections=200)) as client:
        jobs = [await scheduled_job(client) for _ in range(5)]
        for round_ in range(3):
            streams = await asyncio.gather(
                *(open_stream(client, jobs[i % 5]) for i in range(60)))
            assert len(served.watchers) == 60
            for stream in streams:  # the server is waiting for events on each
                await stream.close()
            await wait_until(lambda: _true(len(served.watchers) == 0), 20,
                             f"every watcher released (round {round_})")
            assert served.watchers.jobs_watched == 0
        r = await client.get("/readyz")
        assert r.json()["watchers"] == {"active": 0, "jobs": 0, "max": 1000,
                                        "subscribed": True}


async def test_cap_answers_503_with_retry_after(live_settings: Settings) -> None:
    async with serve(live_settings.model_copy(update={"sse_max_clients": 3})) as s, \
            httpx.AsyncClient(base_url=s.url, timeout=30) as client:
        job = await scheduled_job(client)
        streams = [await open_stream(client, job) for _ in range(3)]
        refused = await client.get(f"/jobs/{job}/events")
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "5"
        assert refused.json()["error"]["code"] == "too_many_watchers"
        assert refused.json()["error"]["details"] == {"maxWatchers": 3}
        assert (await client.get("/readyz")).status_code == 200
        await streams[0].close()
        await wait_until(lambda: _true(len(s.watchers) == 2), 20, "a free slot")
        fourth = await open_stream(client, job)
        assert fourth.status_code == 200
        for stream in [*streams[1:], fourth]:
            await stream.close()


async def test_one_tenant_cannot_take_every_stream(live_settings: Settings,
                                                   stores: Stores) -> None:
    db = stores.mongo[live_settings.mongodb_database]
    limits = {"sse_max_clients": 5, "sse_max_clients_per_tenant": 2}
    async with serve(live_settings.model_copy(update=limits)) as s:
        clients = {tenant: httpx.AsyncClient(base_url=s.url, timeout=30,
                                             headers=await bearer(db, tenant))
                   for tenant in ("bob", "alice", "carol")}
        admin = httpx.AsyncClient(base_url=s.url, timeout=30,
                                  headers=await bearer(db, "bob", "admin"))
        try:
            bob, alice, carol = clients["bob"], clients["alice"], clients["carol"]
            bobs_job, alices_job = await scheduled_job(bob), await scheduled_job(alice)
            streams = [await open_stream(bob, bobs_job) for _ in range(2)]
            refused = await bob.get(f"/jobs/{bobs_job}/events")
            assert refused.status_code == 429, refused.text
            assert refused.headers["retry-after"] == "5"
            assert refused.json()["error"]["code"] == "too_many_tenant_watchers"
            assert refused.json()["error"]["details"] == {"tenant": "bob",
                                                         "maxWatchersPerTenant": 2}
            # an admin key of bob's tenant uses bob's share, even on alice's job
            assert (await admin.get(f"/jobs/{alices_job}/events")).status_code == 429
            # the other tenants still get theirs while the process has room
            streams += [await open_stream(alice, alices_job) for _ in range(2)]
            assert all(stream.status_code == 200 for stream in streams)
            carols = await open_stream(carol, await scheduled_job(carol))
            assert len(s.watchers) == 5 and s.watchers.of_tenant("bob") == 2
            full = await carol.get(f"/jobs/{carols.job_id}/events")
            assert full.status_code == 503  # the process's own limit
            assert full.json()["error"]["code"] == "too_many_watchers"

            # a stream whose client went away frees its place in the tenant's share
            await streams[0].close()
            await wait_until(lambda: _true(s.watchers.of_tenant("bob") == 1), 20,
                             "bob's closed stream released")
            streams[0] = await open_stream(bob, bobs_job)
            # and so does one that ended because its job finished
            assert (await bob.post(f"/jobs/{bobs_job}/cancel")).status_code == 200
            for stream in streams[:2]:
                assert await stream.closed() == ["status", "job.cancelled"]
            await wait_until(lambda: _true(s.watchers.of_tenant("bob") == 0), 20,
                             "bob's finished streams released")
            again = await open_stream(bob, await scheduled_job(bob))
            assert again.status_code == 200 and s.watchers.of_tenant("bob") == 1
            for stream in [*streams[2:], carols, again]:
                await stream.close()
            await wait_until(lambda: _true(len(s.watchers) == 0), 20, "all released")
        finally:
            for client in [*clients.values(), admin]:
                await client.aclose()


async def test_unknown_or_odd_job_ids_are_404(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.url, timeout=30) as client:
        for job_id in ("job_nope", "x" * 2000, "%E2%98%83", "%00", "job_%7B%7D"):
            r = await client.get(f"/jobs/{job_id}/events")
            assert r.status_code == 404, (job_id, r.text)
            assert r.json()["error"]["code"] == "not_found"
        assert len(served.watchers) == 0


async def test_a_lost_doorbell_message_is_rebuilt_from_history(served: Served,
                                                               stores: Stores) -> None:
    async with httpx.AsyncClient(base_url=served.url, timeout=30) as client:
        job = await scheduled_job(client)
        stream = await open_stream(client, job)
        # SCHEDULED -> QUEUED recorded but never published, then a published cancel
        await transitions.change(stores.jobs, job,
                                 lambda doc: transitions.requeue(doc, stores.clock.now()))
        assert (await client.post(f"/jobs/{job}/cancel")).status_code == 200
        assert await stream.closed() == ["status", "job.queued", "job.cancelled"]
        assert [e["seq"] for _, e in stream.events] == [1, 2, 3]


async def test_resubscribing_rereads_what_was_missed(served: Served, stores: Stores) -> None:
    """The subscriber's connection is killed; an event recorded meanwhile (and never
    published) still reaches the stream: every resubscription re-reads the jobs."""
    async with httpx.AsyncClient(base_url=served.url, timeout=30) as client:
        job = await scheduled_job(client)
        stream = await open_stream(client, job)
        await transitions.change(stores.jobs, job,
                                 lambda doc: transitions.requeue(doc, stores.clock.now()))
        assert await stores.redis.client_kill_filter(_type="pubsub") >= 1
        await wait_until(lambda: _true(len(stream.events) == 2), 20, "the missed event")
        assert stream.names == ["status", "job.queued"]
        await stream.close()


async def test_bad_messages_on_the_channel_do_not_stop_the_fan_out(
        served: Served, stores: Stores, live_settings: Settings) -> None:
    channel = stores.queue.keys.events_channel
    assert live_settings.redis_url
    raw = Redis.from_url(live_settings.redis_url)  # publishes bytes as they are
    async with httpx.AsyncClient(base_url=served.url, timeout=30) as client, raw:
        job = await scheduled_job(client)
        stream = await open_stream(client, job)
        for junk in (b"not json", b"[1]", b"42", b"null", b'{"jobId": ["x"]}', b"{}",
                     b"\xff\xfe{", b'{"jobId": "\xff"}', b"x" * 100_000,
                     json.dumps({"jobId": job, "seq": "9", "status": "X", "type": "t"}),
                     json.dumps({"jobId": job, "seq": 1.5, "status": "X", "type": "t"}),
                     json.dumps({"jobId": job, "seq": True, "status": "X", "type": "t"})):
            await raw.publish(channel, junk)
        assert (await client.post(f"/jobs/{job}/cancel")).status_code == 200
        assert await stream.closed() == ["status", "job.cancelled"]
        assert served.watchers.subscribed


async def test_a_watcher_that_overflows_is_told_to_reread() -> None:
    watch = Watch("job_a", capacity=3)
    for seq in range(1, 6):
        watch.offer({"seq": seq})
    batch = await watch.take()
    assert batch.lost  # 1-4 dropped (MongoDB has them); 5 came after the overflow
    assert batch.events == [{"seq": 5}]
    watch.offer({"seq": 6})
    batch = await watch.take()
    assert not batch.lost and batch.events == [{"seq": 6}]


async def test_a_slow_stream_still_gets_every_event(served: Served, stores: Stores) -> None:
    """Far more events than a watcher buffers arrive before its stream reads again: it
    is marked lost and rebuilds them from the job's history."""
    async with httpx.AsyncClient(base_url=served.url, timeout=30) as client:
        job = await scheduled_job(client)
        stream = await open_stream(client, job)
        now = stores.clock.now
        steps: list[Callable[[transitions.Doc], transitions.Transition]] = [
            lambda d: transitions.requeue(d, now()),
            *[lambda d: transitions.claim(d, entry_id="0-1", worker_id="w", now=now())] * 78,
            lambda d: transitions.complete(d, {"ok": True}, now())]
        published = []
        for step in steps:  # SCHEDULED, QUEUED, PROCESSING (taken over 77 times), COMPLETED
            _, t = await transitions.change(stores.jobs, job, step)
            assert t is not None
            published.append(t.event.to_json())
        for event in published:  # as the subscriber would, with no read in between
            served.watchers.dispatch(event)
        names = await stream.closed()
        assert names == ["status", "job.queued", *["job.processing"] * 78, "job.completed"]
        assert [e["seq"] for _, e in stream.events] == list(range(1, 82))


def _raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


async def test_300_streams_do_no_harm_to_a_real_api_process(
        settings: Settings, tmp_path: Path) -> None:
    _raise_fd_limit(4096)
    # NOTE: every stream here is the default tenant's: its share must let 300 through.
    api = spawn("api", settings.model_copy(update={"sse_max_clients_per_tenant": 1000}),
                tmp_path)
    assert api.url
    try:
        limits = httpx.Limits(max_connections=400, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=api.url, timeout=60, limits=limits) as watch, \
                httpx.AsyncClient(base_url=api.url, timeout=60) as client:
            busy = await scheduled_job(client)
            others = [await scheduled_job(client) for _ in range(10)]
            streams = await asyncio.gather(
                *(open_stream(watch, busy if i % 3 else others[i % 10]) for i in range(300)))
            on_busy = [s for s in streams if s.job_id == busy]
            ready = await client.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json()["watchers"]["active"] == 300
            assert (await client.post("/submit-job", json={
                "jobType": "echo", "payload": {"text": "y"}})).status_code == 202
            queued = await submit(client, "echo", {"text": "z"})
            cancelled = await client.post(f"/jobs/{queued}/cancel")
            assert cancelled.status_code == 200, cancelled.text
            assert cancelled.json()["status"] == "CANCELLED"
            assert (await client.post(f"/jobs/{busy}/cancel")).status_code == 200
            for stream in on_busy:
                assert await stream.closed(60) == ["status", "job.cancelled"]
            for stream in streams:
                await stream.close()

            async def released() -> bool:
                r = await client.get("/readyz")
                return bool(r.json()["watchers"]["active"] == 0)

            await wait_until(released, 30, "every watcher released")
    finally:
        assert api.stop() in (0, -15)


FAULTY_API = """
import sys
from services.api import watchers
from services.api.__main__ import main

dispatch = watchers.Watchers.dispatch

def faulty(self, data):
    if data == "boom":
        raise RuntimeError("injected fault")
    dispatch(self, data)

watchers.Watchers.dispatch = faulty
main(sys.argv[1:])
"""


def _start_faulty_api(settings: Settings, port: int, output: Path
                      ) -> subprocess.Popen[bytes]:
    with output.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", FAULTY_API, "--port", str(port)],
                                env=settings_env(settings), cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT)
    wait_for_port(port, proc)
    return proc


async def test_a_crashed_subscriber_stops_the_api_process_loudly(
        settings: Settings, stores: Stores, tmp_path: Path) -> None:
    """A real `jobqueue api` process whose subscriber dies (an injected fault: nothing
    a client can send does it) logs it as critical and exits with status 70."""
    port, output = free_port(), tmp_path / "api.out"
    proc = _start_faulty_api(settings, port, output)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            async def subscribed() -> bool:
                return bool((await client.get("/readyz")).json()["watchers"]["subscribed"])

            await wait_until(subscribed, 20, "the subscription")
        await stores.redis.publish(stores.queue.keys.events_channel, "boom")
        code = await asyncio.to_thread(proc.wait, 30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == EXIT_HELPER_CRASHED
    crashed = [json.loads(line) for line in output.read_text().splitlines()
               if '"helper.crashed"' in line]
    assert crashed and crashed[0]["level"] == "critical"
    assert crashed[0]["helper"] == "watchers" and "injected fault" in crashed[0]["error"]
