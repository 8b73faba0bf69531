"""Hostile receivers against a real notifier (in-process, real MongoDB, Redis, worker
and HTTP servers). Whatever a receiver does, each event gets a delivery record, the
job's later events are not wedged behind it, and other jobs' webhooks still go out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from services.runtime import Stores
from tests.certs import make_ca
from tests.receiver import Receiver, Slow, endless, receiver
from tests.support import submit, wait_until
from tests.webhooks.conftest import StartNotifier
from webhooks.sender import SNIPPET_CHARS

SCHEDULE = [0.1]  # two attempts per event
DEADLINE = 1.0
HUGE = 50 * 1024 * 1024
BAD_RETRY_AFTER = ["1e12", "inf", "-5", "nan", "garbage", "Fri, 31 Dec 9999 23:59:59 GMT"]
EVENTS = ["job.queued", "job.processing", "job.completed"]


def script(hooks: Receiver) -> dict[str, str]:
    """Every hostile path, by name, as a callback URL."""
    chunk = b"x" * 65536
    urls = {
        "huge": hooks.on("/huge", Slow(200, (chunk for _ in range(HUGE // len(chunk))),
                                       length=HUGE)),
        "endless": hooks.on("/endless", Slow(200, endless())),
        "drip": hooks.on("/drip", Slow(200, endless(b"x"), length=10**6, pause=1.0)),
        "redirect": hooks.on("/redirect", (302, {"location": "/redirect2"}, b"")),
    }
    hooks.on("/redirect2", (302, {"location": "/redirect"}, b""))
    for i, value in enumerate(BAD_RETRY_AFTER):
        urls[f"retry-after {value}"] = hooks.on(f"/busy{i}",
                                                (503, {"retry-after": value}, b"busy"))
    return urls


async def records(stores: Stores, job: str) -> dict[str, list[dict[str, Any]]]:
    by_type: dict[str, list[dict[str, Any]]] = {}
    async for d in stores.deliveries.find({"job_id": job}).sort("attempt", 1):
        by_type.setdefault(d["event_type"], []).append(d)
    return by_type


async def outbox_done(stores: Stores, jobs: list[str]) -> bool:
    return await stores.jobs.count_documents(
        {"_id": {"$in": jobs}, "status": "COMPLETED", "outbox": []}) == len(jobs)


async def test_hostile_receivers_get_records_and_wedge_nothing(
        api: httpx.AsyncClient, stores: Stores, background: Any,
        notifier: StartNotifier, tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    with receiver() as hooks, receiver(ca.server("wrong.test")) as tls, \
            receiver() as good:
        urls = script(hooks)
        urls["tls wrong name"] = tls.on("/hook", 204)
        ok = good.on("/ok", 204)
        background()
        notifier(verify=ca.client_context(), webhook_retry_schedule=SCHEDULE,
                 webhook_timeout_seconds=DEADLINE)
        jobs = {name: await submit(api, "echo", {"text": name}, callbackUrl=url)
                for name, url in urls.items()}

        # Responsive: while the drip receiver still holds attempts open, another job's
        # webhooks are all delivered.
        await wait_until(lambda: _has(hooks, "/drip"), 20, "the drip receiver's first call")
        fine = await submit(api, "echo", {"text": "fine"}, callbackUrl=ok)
        await wait_until(lambda: outbox_done(stores, [fine]), 20, "the good job's webhooks")
        drip_log = await records(stores, jobs["drip"])
        assert not drip_log.get("job.completed") or len(drip_log["job.completed"]) < 2

        await wait_until(lambda: outbox_done(stores, list(jobs.values())), 60,
                         "every hostile receiver's outbox to drain")

    outcomes = {name: {t: [d["outcome"] for d in log] for t, log in
                       (await records(stores, job)).items()} for name, job in jobs.items()}
    delivered = {t: ["delivered"] for t in EVENTS}
    given_up = {t: ["retrying", "failed"] for t in EVENTS}
    assert outcomes == {name: delivered if name in ("huge", "endless") else given_up
                        for name in jobs}, outcomes

    for name in ("huge", "endless"):  # a few KiB read, then the connection dropped
        for d in (await records(stores, jobs[name]))["job.queued"]:
            assert len(d["response_snippet"]) == SNIPPET_CHARS
        path = "/" + name
        assert all(r.finished is False for r in hooks.at(path)), name
    for d in (await records(stores, jobs["drip"]))["job.queued"]:
        assert d["status_code"] is None
        assert d["error"] == f"no complete answer within {DEADLINE:g}s"
    for d in (await records(stores, jobs["redirect"]))["job.queued"]:
        assert d["status_code"] == 302 and d["error"] == "HTTP 302"
    assert hooks.at("/redirect2") == []  # never followed
    for d in (await records(stores, jobs["tls wrong name"]))["job.queued"]:
        assert "CERTIFICATE_VERIFY_FAILED" in d["error"], d["error"]
    assert tls.at("/hook") == []
    for value in BAD_RETRY_AFTER:  # clamped to the schedule's longest wait, or ignored
        first = (await records(stores, jobs[f"retry-after {value}"]))["job.queued"][0]
        wait = (first["next_attempt_at"] - first["at"]).total_seconds()
        assert 0 <= wait <= max(SCHEDULE) * 1.2 + 0.001, (value, wait)


async def _has(hooks: Receiver, path: str) -> bool:
    return bool(hooks.at(path))


@pytest.mark.parametrize("value", BAD_RETRY_AFTER)
async def test_bad_retry_after_is_clamped_against_a_real_schedule(
        api: httpx.AsyncClient, stores: Stores, notifier: StartNotifier, value: str) -> None:
    """With the default-sized schedule the clamp is its longest wait, not the header."""
    with receiver() as hooks:
        url = hooks.on("/busy", (503, {"retry-after": value}, b""))
        job = await submit(api, "echo", {"text": "x"}, callbackUrl=url,
                           callbackEvents=["job.queued"])
        notifier(webhook_retry_schedule=[5, 300, 1800])

        async def recorded() -> bool:
            return await stores.deliveries.count_documents({"job_id": job}) > 0

        await wait_until(recorded, 20, "the first attempt's record")
    first = await stores.deliveries.find_one({"job_id": job})
    assert first is not None and first["outcome"] == "retrying"
    wait = (first["next_attempt_at"] - first["at"]).total_seconds()
    assert 0 <= wait <= 1800
