"""API keys: making, finding, listing and revoking them (``api_keys`` collection).

A key is ``jq_`` followed by 43 characters of :func:`secrets.token_urlsafe` (256 random
bits). It is shown once, when made; only its SHA-256 is stored, with the tenant it acts
for, its scopes, an optional submit rate and a short non-secret prefix to recognise it.
A key is found by the hash of what a request presents: one read of a unique index.

Scopes (each includes the ones below it)::

    admin   everything, on every tenant's jobs
    submit  submit jobs, and cancel, retry, delete and redeliver the tenant's jobs
    read    status, documents, lists, events, deliveries and artifacts of the tenant's jobs

Keys are revoked, never deleted, so "no key was ever made" (the API's protected mode)
stays false once the first key exists.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from shared.models import ApiKey
from shared.ratelimit import Rate
from shared.tenants import check_tenant_name, ensure_tenant

KEY_PREFIX = "jq_"
SECRET_BYTES = 32
SHOWN_CHARS = 10
"""Characters of a key kept for display (``jq_`` and 7 of the secret's 43)."""
KEY_SHAPE = re.compile(r"jq_[A-Za-z0-9_-]{43}")
"""What :func:`create_key` makes: the prefix, then 32 bytes in unpadded base64url."""


class Scope(StrEnum):
    READ = "read"
    SUBMIT = "submit"
    ADMIN = "admin"


IMPLIED: dict[Scope, frozenset[Scope]] = {
    Scope.READ: frozenset({Scope.READ}),
    Scope.SUBMIT: frozenset({Scope.SUBMIT, Scope.READ}),
    Scope.ADMIN: frozenset(Scope),
}
DEFAULT_SCOPES = (Scope.SUBMIT,)


def granted(scopes: list[str] | tuple[Scope, ...]) -> frozenset[Scope]:
    """Every scope the given ones allow (``submit`` also allows ``read``)."""
    allowed: frozenset[Scope] = frozenset()
    for scope in scopes:
        allowed |= IMPLIED[Scope(scope)]
    return allowed


@dataclass(frozen=True)
class KeyInfo:
    """What is stored about a key: everything but the key itself."""

    key_id: str
    prefix: str
    tenant: str
    scopes: tuple[Scope, ...]
    submit_rate: Rate | None
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> KeyInfo:
        rate = doc.get("submit_rate")
        return cls(doc["_id"], doc["prefix"], doc["tenant"],
                   tuple(Scope(s) for s in doc["scopes"]),
                   Rate.parse(rate) if rate else None, doc["created_at"], doc.get("revoked_at"))


def well_formed(key: str) -> bool:
    """Could :func:`create_key` have made this? Anything else is no key, unread."""
    return KEY_SHAPE.fullmatch(key) is not None


def hash_key(key: str) -> str:
    """The stored form of a key.

    NOTE: a fast hash is right here. Slow password hashes (bcrypt, scrypt) exist to make
    guessing low-entropy passwords expensive; a key is 256 random bits, which no amount
    of hashing speed brings within reach, and a fast hash keeps each request's check to
    microseconds (and lets the hash be a unique index to look keys up by).
    """
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def api_keys(db: AsyncDatabase[dict[str, Any]]) -> AsyncCollection[dict[str, Any]]:
    return db[ApiKey.Settings.name]


async def create_key(db: AsyncDatabase[dict[str, Any]], tenant: str,
                     scopes: tuple[Scope, ...] = DEFAULT_SCOPES,
                     submit_rate: str | None = None) -> tuple[KeyInfo, str]:
    """Make a key for ``tenant`` (stored with its first key, see shared.tenants);
    return what is stored and the key, which exists nowhere else.

    ValueError for an invalid tenant name, scope or rate."""
    check_tenant_name(tenant)
    scopes = tuple(dict.fromkeys(Scope(s) for s in scopes or DEFAULT_SCOPES))
    if submit_rate is not None:
        submit_rate = str(Rate.parse(submit_rate))
    await ensure_tenant(db, tenant)
    # NOTE: the API makes this index at start-up too; a key made before any API ran
    # must still be found by an indexed read.
    await api_keys(db).create_indexes(ApiKey.Settings.indexes)
    key = KEY_PREFIX + secrets.token_urlsafe(SECRET_BYTES)
    now = datetime.now(UTC).replace(microsecond=0)
    doc = {"_id": "key_" + secrets.token_hex(8), "key_hash": hash_key(key),
           "prefix": key[:SHOWN_CHARS], "tenant": tenant, "scopes": [s.value for s in scopes],
           "submit_rate": submit_rate, "created_at": now, "revoked_at": None}
    await api_keys(db).insert_one(doc)
    return KeyInfo.from_doc(doc), key


async def list_keys(db: AsyncDatabase[dict[str, Any]]) -> list[KeyInfo]:
    """Every key, revoked ones included, oldest first."""
    docs = await api_keys(db).find({}, {"key_hash": 0}).sort("created_at", 1).to_list()
    return [KeyInfo.from_doc(d) for d in docs]


async def revoke_key(db: AsyncDatabase[dict[str, Any]], key_id: str) -> KeyInfo | None:
    """Revoke a key (idempotent: an already revoked one keeps its time); None if there is
    no such key."""
    keys = api_keys(db)
    doc = await keys.find_one_and_update(
        {"_id": key_id, "revoked_at": None},
        {"$set": {"revoked_at": datetime.now(UTC).replace(microsecond=0)}},
        projection={"key_hash": 0}, return_document=ReturnDocument.AFTER)
    if doc is None:
        doc = await keys.find_one({"_id": key_id}, {"key_hash": 0})
    return None if doc is None else KeyInfo.from_doc(doc)


async def find_key(keys: AsyncCollection[dict[str, Any]], key_hash: str) -> KeyInfo | None:
    """The key whose :func:`hash_key` this is, revoked or not; None if no such key."""
    doc = await keys.find_one({"key_hash": key_hash}, {"key_hash": 0})
    return None if doc is None else KeyInfo.from_doc(doc)


async def any_key_made(keys: AsyncCollection[dict[str, Any]]) -> bool:
    return await keys.find_one({}, {"_id": 1}) is not None
