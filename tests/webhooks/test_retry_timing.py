"""Retries go out on their schedule, not on the notifier's next periodic sweep."""

from __future__ import annotations

import itertools
from typing import Any

import httpx

from services.runtime import Stores
from tests.receiver import receiver
from tests.support import submit, wait_until
from tests.webhooks.conftest import StartNotifier

SCHEDULE = [0.5, 0.5]
SWEEP = 30.0  # so long that waiting for the next sweep fails the test
MARGIN = 5.0  # generous for a busy machine, but far below the sweep interval


async def test_retries_follow_the_schedule_with_a_long_sweep_interval(
        api: httpx.AsyncClient, stores: Stores, notifier: StartNotifier) -> None:
    with receiver() as hooks:
        url = hooks.on("/down", 500)
        await submit(api, "echo", {"text": "x"}, callbackUrl=url,
                     callbackEvents=["job.queued"])
        notifier(webhook_retry_schedule=SCHEDULE, webhook_sweep_interval_seconds=SWEEP)

        async def tried_thrice() -> bool:
            return len(hooks.at("/down")) >= 3

        await wait_until(tried_thrice, 3 * MARGIN, "the first attempt and 2 retries")
        times = [r.at for r in hooks.at("/down")]
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        for gap, scheduled in zip(gaps, SCHEDULE, strict=True):
            assert scheduled * 0.8 - 0.05 <= gap <= scheduled * 1.2 + MARGIN, gaps

        async def gave_up() -> bool:
            doc: dict[str, Any] | None = await stores.jobs.find_one({}, {"outbox": 1})
            return doc is not None and doc["outbox"] == []

        await wait_until(gave_up, MARGIN, "the event to be given up")
        outcomes = [d["outcome"] async for d in stores.deliveries.find().sort("attempt", 1)]
        assert outcomes == ["retrying", "retrying", "failed"]
