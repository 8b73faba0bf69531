"""``jobqueue notifier``: deliver signed webhooks for job events."""

from __future__ import annotations

import argparse
import asyncio

from services.notifier.notifier import make_notifier
from services.runtime import on_stop_signals, open_stores, start_service
from shared.logs import get_log
from shared.outbound import outbound_client
from webhooks.signing import parse_secrets

log = get_log(__name__)


async def serve() -> None:
    settings = start_service("notifier")
    if not settings.webhook_secret:
        raise SystemExit("JOBQUEUE_WEBHOOK_SECRET is not set: webhooks are always signed "
                         "(a 'whsec_<base64>' secret; several space-separated to rotate)")
    keys = parse_secrets(settings.webhook_secret)
    stores = await open_stores(settings)
    async with outbound_client(settings.webhook_allowed_hosts,
                               timeout=settings.webhook_timeout_seconds,
                               max_connections=settings.webhook_concurrency) as client:
        notifier = make_notifier(settings, stores, client, keys)
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
