"""The outbox lease names its holder: a notifier whose send outlived its lease (a stalled
process) cannot clear the next holder's lease, so one job's events never go out
concurrently, and its attempt is still recorded."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx

from services.runtime import Stores
from shared.outbound import OutboundClient, OutboundGuard
from tests.receiver import Slow, receiver
from tests.support import submit, wait_finished, wait_until
from tests.webhooks.conftest import KEYS
from webhooks.delivery import OutboxDeliverer
from webhooks.sender import Sender


async def test_a_lost_lease_changes_nothing(api: httpx.AsyncClient, stores: Stores,
                                            background: Any) -> None:
    first_held, rest_held = threading.Event(), threading.Event()
    with receiver() as hooks:
        # A's first request is held past its lease; B's first answers at once; every
        # later request is held until the end.
        url = hooks.on("/hook", Slow(204, hold=first_held), 204, Slow(204, hold=rest_held))
        background()
        job = await submit(api, "echo", {"text": "x"}, callbackUrl=url)
        await wait_finished(stores.jobs, [job], 20)  # 3 events in the outbox

        async with OutboundClient(OutboundGuard(["127.0.0.1"]), timeout=30) as client:
            # A stands for a stalled notifier: its send may outlive its 1 s lease.
            a = OutboxDeliverer(stores.jobs, stores.deliveries, Sender(client, KEYS, 30),
                                stores.clock, [0.1], lease_seconds=1)
            b = OutboxDeliverer(stores.jobs, stores.deliveries, Sender(client, KEYS, 30),
                                stores.clock, [0.1], lease_seconds=60)
            a_task = asyncio.create_task(a.deliver(job))
            await wait_until(lambda: requests(hooks, 1), 10, "A to send the first event")

            async def lease_expired() -> bool:
                doc = await stores.jobs.find_one({"_id": job})
                return bool(doc and doc["outbox_lease_until"] < stores.clock.now())

            await wait_until(lease_expired, 10, "A's lease to run out")
            b_task = asyncio.create_task(b.deliver(job))
            await wait_until(lambda: requests(hooks, 3), 10,
                             "B to deliver the first event and send the second")
            held_by_b = (await job_doc(stores, job))["outbox_lease_owner"]

            first_held.set()  # A's send finally returns 204, long after its lease

            async def a_done_or_sent_again() -> bool:
                return a_task.done() or len(hooks.at("/hook")) > 3

            await wait_until(a_done_or_sent_again, 10, "A to finish")
            assert len(hooks.at("/hook")) == 3  # A sent nothing while B holds the outbox
            assert a_task.done() and a_task.result() is None
            doc = await job_doc(stores, job)
            assert doc["outbox_lease_owner"] == held_by_b  # B's lease survived A's writes
            assert doc["outbox_lease_until"] > stores.clock.now()

            rest_held.set()
            await asyncio.wait_for(b_task, 20)

        seqs = [int(r.body.split(b'"seq":')[1].split(b",")[0]) for r in hooks.at("/hook")]
        assert seqs == [1, 1, 2, 3]  # in order; the first twice (A's, then B's takeover)
        records = [(d["event_type"], d["outcome"])
                   async for d in stores.deliveries.find({"job_id": job}).sort("at", 1)]
        assert sorted(records) == sorted([  # A's late attempt is recorded too
            ("job.queued", "delivered"), ("job.queued", "delivered"),
            ("job.processing", "delivered"), ("job.completed", "delivered")])
        doc = await job_doc(stores, job)
        assert doc["outbox"] == [] and "outbox_lease_owner" not in doc


async def requests(hooks: Any, n: int) -> bool:
    return len(hooks.at("/hook")) >= n


async def job_doc(stores: Stores, job: str) -> dict[str, Any]:
    doc = await stores.jobs.find_one({"_id": job})
    assert doc is not None
    return doc
