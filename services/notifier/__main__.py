"""``jobqueue notifier``: deliver signed webhooks for job events."""

from __future__ import annotations

import argparse
import asyncio

import httpx

from services.notifier.notifier import Notifier
from services.runtime import on_stop_signals, open_stores, start_service
from shared.logs import get_log
from shared.outbound import OutboundGuard
from webhooks.delivery import OutboxDeliverer, Sender
from webhooks.signing import parse_secrets

log = get_log(__name__)


async def serve() -> None:
    settings = start_service("notifier")
    if not settings.webhook_secret:
        raise SystemExit("JOBQUEUE_WEBHOOK_SECRET is not set: webhooks are always signed "
                         "(a 'whsec_<base64>' secret; several space-separated to rotate)")
    keys = parse_secrets(settings.webhook_secret)
    stores = await open_stores(settings)
    limits = httpx.Limits(max_connections=settings.webhook_concurrency)
    async with httpx.AsyncClient(limits=limits, follow_redirects=False,
                                 trust_env=False) as client:
        sender = Sender(client, OutboundGuard(settings.webhook_allowed_hosts, "callbackUrl"),
                        keys, settings.webhook_timeout_seconds)
        deliverer = OutboxDeliverer(stores.jobs, stores.deliveries, sender, stores.clock,
                                    settings.webhook_retry_schedule,
                                    settings.webhook_lease_seconds)
        notifier = Notifier(stores.jobs, deliverer, stores.redis,
                            stores.queue.keys.events_channel, stores.clock,
                            settings.webhook_sweep_interval_seconds,
                            settings.webhook_concurrency)
        stop = asyncio.Event()
        on_stop_signals(stop.set)
        log.info("notifier.started", secrets=len(keys))
        await notifier.run(stop)
    await stores.close()
    log.info("notifier.stopped")


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(prog="jobqueue notifier").parse_args(argv)
    asyncio.run(serve())


if __name__ == "__main__":
    main()
