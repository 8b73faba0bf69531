"""An in-process notifier (the real wiring, real MongoDB and Redis, real HTTP)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from services.notifier.notifier import Notifier, make_notifier
from services.runtime import Stores
from shared.outbound import OutboundClient, OutboundGuard
from shared.settings import Settings
from tests.support import TEST_WEBHOOK_SECRET
from webhooks.signing import parse_secrets

KEYS = parse_secrets(TEST_WEBHOOK_SECRET)
StartNotifier = Callable[..., Notifier]


@pytest.fixture
async def notifier(settings: Settings, stores: Stores) -> AsyncIterator[StartNotifier]:
    """Start notifiers in the background: ``notifier(verify=ctx, **setting_overrides)``."""
    running: list[tuple[asyncio.Event, asyncio.Task[None], OutboundClient]] = []

    def start(verify: ssl.SSLContext | bool = True, **overrides: Any) -> Notifier:
        s = settings.model_copy(update=overrides)
        client = OutboundClient(OutboundGuard(s.webhook_allowed_hosts),
                                timeout=s.webhook_timeout_seconds, verify=verify)
        made = make_notifier(s, stores, client, KEYS)
        stop = asyncio.Event()
        running.append((stop, asyncio.create_task(made.run(stop)), client))
        return made

    yield start
    for stop, task, client in running:
        stop.set()
        await asyncio.wait_for(task, 30)
        await client.aclose()
