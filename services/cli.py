"""``jobqueue``: one command for every process."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "api": "services.api.__main__",
    "worker": "services.worker.__main__",
    "scheduler": "services.scheduler.__main__",
    "notifier": "services.notifier.__main__",
    "dev": "services.dev.__main__",
    "keys": "services.keys.__main__",
    "tenants": "services.tenants.__main__",
}
USAGE = """usage: jobqueue <command> [options]

commands:
  dev         the whole system in one process tree (embedded Redis/MongoDB if unset)
  api         the HTTP API            (--host, --port)
  worker      run jobs                (--concurrency N, --burst)
  scheduler   delayed jobs, crash recovery, reconciliation
  notifier    signed webhook delivery (needs JOBQUEUE_WEBHOOK_SECRET)
  keys        API keys                (create --tenant NAME [--scope S]..., list, revoke ID)
  tenants     webhook signing secrets per tenant (list, show NAME, rotate-secret NAME)

Configuration comes from JOBQUEUE_* environment variables (see README)."""


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(USAGE, file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])
