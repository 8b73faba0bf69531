"""``jobqueue tenants``: see and rotate tenants' webhook signing secrets.

    jobqueue tenants list                          every stored tenant
    jobqueue tenants show NAME                     its secrets that sign now
    jobqueue tenants rotate-secret NAME [--grace SECONDS]

``rotate-secret`` prints the new secret alone on its last line of output; the previous
ones keep signing for the grace period (default a day; ``--grace 0`` for a leaked
secret). It stores the rotation in MongoDB, then announces it in Redis
(``JOBQUEUE_REDIS_URL``), so every notifier signs with the new secrets from its next
delivery on; when Redis cannot be told it says so, and notifiers see the rotation within
``JOBQUEUE_WEBHOOK_SECRETS_REFRESH_SECONDS``. Tenants are stored with their first API
key; the default tenant's secret is ``JOBQUEUE_WEBHOOK_SECRET``.
"""

from __future__ import annotations

import argparse
import sys

from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.admin_command import Db, run_subcommand
from shared.settings import Settings
from shared.tenants import (
    DEFAULT_TENANT,
    RotationNotices,
    SigningSecret,
    UnknownTenant,
    check_tenant_name,
    rotate_secret,
    signing_secrets,
    tenants_collection,
)

DEFAULT_GRACE_SECONDS = 24 * 3600
MAX_GRACE_SECONDS = 365 * 24 * 3600


def _line(secret: SigningSecret) -> str:
    retires = f"  retires {secret.retire_at.isoformat()}" if secret.retire_at else ""
    return f"{secret.secret}  created {secret.created_at.isoformat()}{retires}"


async def _list(db: Db, args: argparse.Namespace, settings: Settings) -> None:
    print(DEFAULT_TENANT)
    async for doc in tenants_collection(db).find({}, {"_id": 1}).sort("_id", 1):
        print(doc["_id"])


async def _show(db: Db, args: argparse.Namespace, settings: Settings) -> None:
    if args.name == DEFAULT_TENANT:
        values = (settings.webhook_secret or "").split()
        if not values:
            raise SystemExit("the default tenant signs with JOBQUEUE_WEBHOOK_SECRET, which "
                             "is not set here: run this with the notifier's environment")
        print("# the default tenant signs with JOBQUEUE_WEBHOOK_SECRET", file=sys.stderr)
        for value in values:
            print(value)
        return
    for secret in await signing_secrets(db, args.name):
        print(_line(secret))


async def _rotate(db: Db, args: argparse.Namespace, settings: Settings) -> None:
    secret = await rotate_secret(db, args.name, args.grace)
    print(f"# tenant {args.name}: new signing secret; the previous ones keep signing for "
          f"{args.grace:g} s", file=sys.stderr)
    problem = await _announce(args.name, settings)
    if problem:
        print(f"# WARNING: the notifiers were not told ({problem}): they sign with the new "
              f"secret within {settings.webhook_secrets_refresh_seconds:g} s "
              "(JOBQUEUE_WEBHOOK_SECRETS_REFRESH_SECONDS)", file=sys.stderr)
    print(secret)


async def _announce(name: str, settings: Settings) -> str | None:
    """Tell every notifier of the rotation (shared.tenants.RotationNotices); what went
    wrong if it could not."""
    if not settings.redis_url:
        return "JOBQUEUE_REDIS_URL is not set"
    timeout = settings.mongodb_timeout_seconds
    redis = Redis.from_url(settings.redis_url, socket_connect_timeout=timeout,
                           socket_timeout=timeout)
    try:
        await RotationNotices(redis, settings.redis_prefix).announce(name)
    except (RedisError, OSError) as exc:
        return f"Redis: {exc}"
    finally:
        await redis.aclose()
    return None


def _tenant(value: str) -> str:
    try:
        return check_tenant_name(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _grace(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= MAX_GRACE_SECONDS:
        raise argparse.ArgumentTypeError(
            f"a grace period is 0 to {MAX_GRACE_SECONDS:g} seconds, not {value!r}")
    return seconds


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jobqueue tenants",
                                     description="Tenants' webhook signing secrets.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="every stored tenant").set_defaults(run=_list)
    show = commands.add_parser("show", help="the secrets that sign a tenant's webhooks")
    show.add_argument("name", type=_tenant)
    show.set_defaults(run=_show)
    rotate = commands.add_parser(
        "rotate-secret", help="a new signing secret; the old ones sign on for --grace")
    rotate.add_argument("name", type=_tenant)
    rotate.add_argument("--grace", type=_grace, default=DEFAULT_GRACE_SECONDS,
                        metavar="SECONDS",
                        help=f"how long the previous secrets keep signing "
                             f"(default {DEFAULT_GRACE_SECONDS})")
    rotate.set_defaults(run=_rotate)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        run_subcommand(args, "jobqueue-tenants")
    except UnknownTenant as exc:
        raise SystemExit(f"no tenant {exc.args[0]!r}: a tenant is made with its first API "
                         "key (jobqueue keys create --tenant NAME)") from None
    except ValueError as exc:
        parser.error(str(exc))


if __name__ == "__main__":
    main()
