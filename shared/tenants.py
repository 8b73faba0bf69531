"""Tenants: who a job belongs to, and the secret its webhooks are signed with.

Every job belongs to one tenant, the tenant of the API key that submitted it. Until keys
exist (or with authentication disabled) everything belongs to :data:`DEFAULT_TENANT`.
Tenant names appear in Redis key names, so they are restricted to a safe alphabet.

Each tenant other than the default has its own webhook signing secrets, kept in the
``tenants`` collection (the notifier must sign with them, so they are stored as they
are, not hashed)::

    {_id: name, created_at, version,
     secrets: [{secret: "whsec_…", created_at, retire_at: None | datetime}, …]}

newest first. :func:`ensure_tenant` makes a tenant with a fresh secret (with its first
API key); :func:`rotate_secret` adds a new one and retires the others after a grace
period, during which deliveries carry a signature by each. The default tenant's secrets
are ``JOBQUEUE_WEBHOOK_SECRET`` and are never stored here; a tenant that is not stored
(say, jobs submitted before it had keys) is signed for with the default's, a stored one
never (webhooks.keys).

A rotation is announced in Redis (:class:`RotationNotices`: one counter per tenant that
each rotation bumps); a notifier checks the counter before each delivery and reads the
tenant again when it changed, so a rotation applies to every delivery that starts after
it was announced, not only after the notifier's next periodic read.
"""

from __future__ import annotations

import base64
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError
from redis.asyncio import Redis

DEFAULT_TENANT = "default"
TENANT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
TENANTS_COLLECTION = "tenants"
SECRET_BYTES = 32


def check_tenant_name(name: str) -> str:
    """``name`` if it is a valid tenant name, else ValueError saying what is allowed."""
    if not TENANT_NAME.fullmatch(name):
        raise ValueError("a tenant name is 1-63 characters: lowercase letters, digits, "
                         "'-' and '_', starting with a letter or digit")
    return name


class UnknownTenant(LookupError):
    """No tenant of that name is stored (it gets one with its first API key)."""


@dataclass(frozen=True)
class SigningSecret:
    secret: str
    """``whsec_<base64>``, as a receiver configures it."""
    created_at: datetime
    retire_at: datetime | None = None
    """Set by a rotation: the secret stops signing then."""

    def active(self, now: datetime) -> bool:
        return self.retire_at is None or self.retire_at > now


@dataclass(frozen=True)
class RotationNotices:
    """Where rotations are announced: the Redis hash ``{prefix}:tenant_secrets``, one
    counter per tenant, bumped after each rotation of its secrets is stored."""

    redis: Redis
    prefix: str

    @property
    def key(self) -> str:
        return f"{self.prefix}:tenant_secrets"

    async def announce(self, name: str) -> None:
        await self.redis.hincrby(self.key, name, 1)

    async def count(self, name: str) -> int:
        """How many rotations of ``name`` were announced (0 when none, or forgotten)."""
        value: Any = await self.redis.hget(self.key, name)
        return int(value or 0)


def new_secret() -> str:
    """A fresh Standard Webhooks secret: ``whsec_`` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def tenants_collection(db: AsyncDatabase[dict[str, Any]]) -> AsyncCollection[dict[str, Any]]:
    return db[TENANTS_COLLECTION]


def _now() -> datetime:
    # BSON datetimes keep milliseconds: truncated, stored and read back compare equal.
    return datetime.fromtimestamp(int(datetime.now(UTC).timestamp() * 1000) / 1000, UTC)


def _stored(secret: SigningSecret) -> dict[str, Any]:
    return {"secret": secret.secret, "created_at": secret.created_at,
            "retire_at": secret.retire_at}


def _aware(moment: datetime | None) -> datetime | None:
    """A stored datetime in UTC, also when read by a client that is not ``tz_aware``."""
    return moment.replace(tzinfo=UTC) if moment and moment.tzinfo is None else moment


def _loaded(doc: dict[str, Any] | None) -> list[SigningSecret]:
    if doc is None:
        return []
    return [SigningSecret(s["secret"], _aware(s["created_at"]) or s["created_at"],
                          _aware(s.get("retire_at")))
            for s in doc.get("secrets", [])]


async def ensure_tenant(db: AsyncDatabase[dict[str, Any]], name: str) -> None:
    """Store tenant ``name`` with a fresh signing secret unless it exists already.

    Idempotent, and safe when several callers race: the tenant's ``_id`` is its name, so
    one insert wins and the others find it there. The default tenant is never stored
    (its secret is ``JOBQUEUE_WEBHOOK_SECRET``)."""
    check_tenant_name(name)
    if name == DEFAULT_TENANT:
        return
    now = _now()
    try:
        await tenants_collection(db).insert_one({
            "_id": name, "created_at": now, "version": 1,
            "secrets": [_stored(SigningSecret(new_secret(), now))]})
    except DuplicateKeyError:
        pass


async def stored_secrets(tenants: AsyncCollection[dict[str, Any]], name: str
                         ) -> list[SigningSecret] | None:
    """The tenant's stored secrets, newest first, retired ones included; None when the
    tenant is not stored."""
    doc = await tenants.find_one({"_id": name}, {"secrets": 1})
    return None if doc is None else _loaded(doc)


async def signing_secrets(db: AsyncDatabase[dict[str, Any]], name: str, *,
                          now: datetime | None = None) -> list[SigningSecret]:
    """The secrets deliveries for ``name``'s jobs are signed with now, newest first
    (UnknownTenant if it is not stored; not for the default tenant)."""
    check_tenant_name(name)
    found = await stored_secrets(tenants_collection(db), name)
    if found is None:
        raise UnknownTenant(name)
    moment = now or _now()
    return [s for s in found if s.active(moment)]


async def rotate_secret(db: AsyncDatabase[dict[str, Any]], name: str,
                        grace_seconds: float) -> str:
    """Give tenant ``name`` a new signing secret and return it.

    Its current secrets keep signing for ``grace_seconds`` more (never longer than a
    previous rotation allowed), then retire; retired ones are dropped. UnknownTenant if
    the tenant is not stored; ValueError for the default tenant, whose secrets are
    ``JOBQUEUE_WEBHOOK_SECRET`` (rotate it by listing new and old there). Announce it
    afterwards (:meth:`RotationNotices.announce`), or notifiers that have the tenant's
    secrets cached see it only at their next refresh."""
    check_tenant_name(name)
    if name == DEFAULT_TENANT:
        raise ValueError("the default tenant signs with JOBQUEUE_WEBHOOK_SECRET: rotate it "
                         "there (the new and the old secret, space-separated)")
    if grace_seconds < 0:
        raise ValueError("the grace period cannot be negative")
    tenants = tenants_collection(db)
    while True:
        doc = await tenants.find_one({"_id": name})
        if doc is None:
            raise UnknownTenant(name)
        now = _now()
        retire_at = now + timedelta(seconds=grace_seconds)
        kept = [SigningSecret(s.secret, s.created_at,
                              min(s.retire_at or retire_at, retire_at))
                for s in _loaded(doc) if s.active(now)]
        fresh = SigningSecret(new_secret(), now)
        # NOTE: conditional on the version read, so two rotations at once cannot drop
        # each other's new secret: the loser reads again and retires the winner's.
        version = doc.get("version")
        done = await tenants.update_one(
            {"_id": name, "version": version if version is not None else {"$exists": False}},
            {"$set": {"secrets": [_stored(s) for s in (fresh, *kept)]},
             "$inc": {"version": 1}})
        if done.matched_count:
            return fresh.secret
