"""``jobqueue keys``: make, list and revoke API keys.

    jobqueue keys create --tenant NAME [--scope submit|read|admin]... [--submit-rate 100/s]
    jobqueue keys list
    jobqueue keys revoke KEY_ID

``create`` prints the new key alone on the last line of its output, and only then: just
its hash is stored. ``list`` shows ids, tenants, scopes and a short prefix of each key,
never a key. A revoke takes effect on every API process within
``JOBQUEUE_API_KEY_CACHE_SECONDS``. Needs ``JOBQUEUE_MONGODB_URL`` only.
"""

from __future__ import annotations

import argparse
from datetime import datetime

from services.admin_command import Db, run_subcommand
from shared.apikeys import DEFAULT_SCOPES, KeyInfo, Scope, create_key, list_keys, revoke_key
from shared.ratelimit import Rate
from shared.settings import Settings
from shared.tenants import check_tenant_name


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment else "-"


def _rate(info: KeyInfo) -> str:
    """The key's own rate, or ``default``: the API's JOBQUEUE_SUBMIT_RATE_LIMIT (which
    this command cannot know)."""
    return str(info.submit_rate) if info.submit_rate else "default"


async def _create(db: Db, args: argparse.Namespace, settings: Settings) -> None:
    info, key = await create_key(db, args.tenant, tuple(args.scope or DEFAULT_SCOPES),
                                 args.submit_rate)
    print(f"key id:      {info.key_id}")
    print(f"tenant:      {info.tenant}")
    print(f"scopes:      {', '.join(info.scopes)}")
    print(f"submit rate: {_rate(info)}")
    print("the key (shown only now; send it as 'Authorization: Bearer <key>'):")
    print(key)


async def _list(db: Db, args: argparse.Namespace, settings: Settings) -> None:
    rows = [("KEY_ID", "PREFIX", "TENANT", "SCOPES", "SUBMIT_RATE", "CREATED", "REVOKED")]
    rows += [(k.key_id, k.prefix + "…", k.tenant, ",".join(k.scopes), _rate(k),
              _when(k.created_at), _when(k.revoked_at)) for k in await list_keys(db)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
              .rstrip())


async def _revoke(db: Db, args: argparse.Namespace, settings: Settings) -> None:
    info = await revoke_key(db, args.key_id)
    if info is None:
        raise SystemExit(f"no key {args.key_id!r} (see jobqueue keys list)")
    print(f"{info.key_id} revoked at {_when(info.revoked_at)}; every API process refuses it "
          f"within {settings.api_key_cache_seconds:g} s")


def _tenant(value: str) -> str:
    try:
        return check_tenant_name(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _submit_rate(value: str) -> str:
    try:
        return str(Rate.parse(value))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jobqueue keys", description="API keys.")
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="make a key (printed once, on the last line)")
    create.add_argument("--tenant", required=True, type=_tenant,
                        help="the tenant the key acts for (its jobs belong to it)")
    create.add_argument("--scope", action="append", choices=[s.value for s in Scope],
                        help="read: see the tenant's jobs; submit: also submit, cancel, "
                             "retry, delete; admin: everything, every tenant "
                             "(repeatable; default submit)")
    create.add_argument("--submit-rate", type=_submit_rate, metavar="RATE",
                        help="this key's submit rate, e.g. 100/s (default "
                             "JOBQUEUE_SUBMIT_RATE_LIMIT)")
    create.set_defaults(run=_create)
    commands.add_parser("list", help="every key, revoked ones too (no secrets)"
                        ).set_defaults(run=_list)
    revoke = commands.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id", metavar="KEY_ID")
    revoke.set_defaults(run=_revoke)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    run_subcommand(args, "jobqueue-keys")


if __name__ == "__main__":
    main()
