"""The notifier's doorbell survives what is published on the events channel."""

from __future__ import annotations

import asyncio

import httpx

from services.runtime import Stores
from tests.receiver import receiver
from tests.support import submit, wait_until
from tests.webhooks.conftest import StartNotifier

SWEEP = 60.0  # so long that only the doorbell can deliver in time


async def test_a_message_that_is_not_utf8_does_not_deafen_the_notifier(
        api: httpx.AsyncClient, stores: Stores, notifier: StartNotifier) -> None:
    with receiver() as hooks:
        url = hooks.on("/hook", 200)
        notifier(webhook_sweep_interval_seconds=SWEEP)

        async def subscribed() -> bool:  # the API's event subscriber, and the notifier
            channel = stores.queue.keys.events_channel
            counts = await stores.redis.pubsub_numsub(channel)
            return bool(counts and counts[0][1] >= 2)

        await wait_until(subscribed, 20, "the notifier to listen")
        # a raw client: the project's own decodes replies as UTF-8
        raw = stores.redis.client()
        await raw.execute_command("PUBLISH", stores.queue.keys.events_channel, b"\xff\xfe{")
        await asyncio.sleep(0)  # let it arrive first (ordering, not timing: same channel)
        await submit(api, "echo", {"text": "x"}, callbackUrl=url,
                     callbackEvents=["job.queued"])

        async def delivered() -> bool:
            return len(hooks.at("/hook")) >= 1

        await wait_until(delivered, 20, "the job.queued webhook")
