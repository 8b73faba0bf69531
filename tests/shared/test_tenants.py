"""Tenants' signing secrets in MongoDB: made once however many callers race, rotated
without losing a secret, read by the notifier through a cache that a rotation announced
in Redis bypasses (real MongoDB and Redis)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient, monitoring
from pymongo.errors import PyMongoError

from services.runtime import Stores
from shared.settings import Settings
from shared.tenants import (
    DEFAULT_TENANT,
    RotationNotices,
    UnknownTenant,
    ensure_tenant,
    rotate_secret,
    signing_secrets,
    stored_secrets,
    tenants_collection,
)
from tests.faults import FaultProxy
from tests.support import TEST_WEBHOOK_SECRET, wait_until
from webhooks.keys import NoSigningKey, TenantKeys
from webhooks.signing import parse_secrets, secret_key

DEFAULT_KEYS = parse_secrets(TEST_WEBHOOK_SECRET)


async def test_ensure_tenant_makes_one_secret_however_many_callers_race(
        stores: Stores) -> None:
    db = stores.jobs.database
    await asyncio.gather(*(ensure_tenant(db, "acme") for _ in range(12)))
    first = await signing_secrets(db, "acme")
    assert len(first) == 1 and first[0].secret.startswith("whsec_")
    assert len(secret_key(first[0].secret)) == 32
    await ensure_tenant(db, "acme")  # idempotent: the secret stays
    assert await signing_secrets(db, "acme") == first
    assert await tenants_collection(db).count_documents({}) == 1
    await ensure_tenant(db, "globex")
    assert (await signing_secrets(db, "globex"))[0].secret != first[0].secret


async def test_the_default_tenant_is_never_stored(stores: Stores) -> None:
    db = stores.jobs.database
    await ensure_tenant(db, DEFAULT_TENANT)
    assert await tenants_collection(db).count_documents({}) == 0
    with pytest.raises(ValueError, match="JOBQUEUE_WEBHOOK_SECRET"):
        await rotate_secret(db, DEFAULT_TENANT, 60)
    with pytest.raises(ValueError, match="tenant name"):
        await ensure_tenant(db, "Not A Name")


async def test_rotation_keeps_the_old_secret_for_the_grace_period(stores: Stores) -> None:
    db = stores.jobs.database
    with pytest.raises(UnknownTenant):
        await rotate_secret(db, "acme", 60)
    await ensure_tenant(db, "acme")
    (old,) = await signing_secrets(db, "acme")
    new = await rotate_secret(db, "acme", 60)
    now, retiring = await signing_secrets(db, "acme")
    assert (now.secret, now.retire_at) == (new, None)
    assert retiring.secret == old.secret and retiring.retire_at is not None
    assert timedelta(seconds=55) < retiring.retire_at - now.created_at <= timedelta(seconds=60)
    after = retiring.retire_at + timedelta(milliseconds=1)
    assert [s.secret for s in await signing_secrets(db, "acme", now=after)] == [new]
    # a second rotation never lengthens an older secret's grace, and drops retired ones
    newer = await rotate_secret(db, "acme", 3600)
    stored = await stored_secrets(tenants_collection(db), "acme")
    assert stored is not None
    assert [s.secret for s in stored] == [newer, new, old.secret]
    assert stored[2].retire_at == retiring.retire_at
    await rotate_secret(db, "acme", 0)
    assert len(await signing_secrets(db, "acme")) == 1


async def test_concurrent_rotations_lose_no_secret(stores: Stores) -> None:
    db = stores.jobs.database
    await ensure_tenant(db, "acme")
    made = await asyncio.gather(*(rotate_secret(db, "acme", 600) for _ in range(5)))
    active = {s.secret for s in await signing_secrets(db, "acme")}
    assert set(made) <= active and len(active) == 6


class FindCounter(monitoring.CommandListener):
    def __init__(self) -> None:
        self.finds: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "find":
            self.finds.append(str(event.command["find"]))

    def succeeded(self, event: Any) -> None:
        pass

    def failed(self, event: Any) -> None:
        pass


async def test_the_notifier_reads_a_tenant_once_per_refresh(settings: Settings,
                                                             stores: Stores) -> None:
    """Many deliveries, one round trip per tenant (known or not) until the refresh."""
    db = stores.jobs.database
    await ensure_tenant(db, "acme")
    counter = FindCounter()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        settings.mongodb_url, tz_aware=True, event_listeners=[counter])
    try:
        keys = TenantKeys(tenants_collection(client[settings.mongodb_database]),
                          DEFAULT_KEYS, refresh_seconds=1.0)
        results = await asyncio.gather(*(keys.signing_keys(t) for t in
                                         ["acme", "nobody", DEFAULT_TENANT] * 30))
        assert counter.finds == ["tenants", "tenants"]  # acme and nobody, once each
        (acme_secret,) = await signing_secrets(db, "acme")
        assert results[0] == [secret_key(acme_secret.secret)]
        assert results[1] == DEFAULT_KEYS and results[2] == DEFAULT_KEYS  # no secret stored

        async def refreshed() -> bool:
            await keys.signing_keys("acme")
            return len(counter.finds) == 3

        await wait_until(refreshed, 10, "the refresh after refresh_seconds", interval=0.2)
    finally:
        await client.close()


async def test_a_retired_key_stops_signing_at_its_time_not_at_the_refresh(
        stores: Stores) -> None:
    db = stores.jobs.database
    await ensure_tenant(db, "acme")
    (old,) = await signing_secrets(db, "acme")
    new = await rotate_secret(db, "acme", 30)
    clock = [datetime.now(UTC)]
    keys = TenantKeys(tenants_collection(db), DEFAULT_KEYS, refresh_seconds=3600,
                      now=lambda: clock[0])
    assert await keys.signing_keys("acme") == [secret_key(new), secret_key(old.secret)]
    clock[0] += timedelta(seconds=31)
    assert await keys.signing_keys("acme") == [secret_key(new)]


async def test_a_failed_refresh_keeps_the_known_keys(settings: Settings, stores: Stores,
                                                      proxy: FaultProxy) -> None:
    """MongoDB unreachable: a tenant already read keeps signing with what was read; one
    never read cannot be signed for (the delivery waits for the next attempt)."""
    db = stores.jobs.database
    await ensure_tenant(db, "acme")
    await ensure_tenant(db, "globex")
    assert settings.mongodb_url
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        proxy.url_for(settings.mongodb_url), tz_aware=True, serverSelectionTimeoutMS=500,
        connectTimeoutMS=500, socketTimeoutMS=1000)
    try:
        keys = TenantKeys(tenants_collection(client[settings.mongodb_database]),
                          DEFAULT_KEYS, refresh_seconds=0.1)
        known = await keys.signing_keys("acme")
        proxy.refusing = True
        proxy.reset()
        await asyncio.sleep(0.2)  # past the refresh: the next call reads again, and fails
        assert await keys.signing_keys("acme") == known
        with pytest.raises(PyMongoError):
            await keys.signing_keys("globex")
        proxy.refusing = False
        new = await rotate_secret(db, "acme", 60)

        async def rotated() -> bool:
            return (await keys.signing_keys("acme"))[0] == secret_key(new)

        await wait_until(rotated, 20, "the refresh once MongoDB answers again")
    finally:
        await client.close()


async def test_an_announced_rotation_is_read_before_the_next_refresh(
        settings: Settings, stores: Stores) -> None:
    db = stores.jobs.database
    await ensure_tenant(db, "acme")
    (old,) = await signing_secrets(db, "acme")
    notices = RotationNotices(stores.redis, settings.redis_prefix)
    keys = TenantKeys(tenants_collection(db), DEFAULT_KEYS, refresh_seconds=3600,
                      notices=notices)
    assert await keys.signing_keys("acme") == [secret_key(old.secret)]
    new = await rotate_secret(db, "acme", 0)
    # not announced: the cache cannot know (this is what the announcement is for)
    assert await keys.signing_keys("acme") == [secret_key(old.secret)]
    await notices.announce("acme")
    assert await keys.signing_keys("acme") == [secret_key(new)]
    assert await notices.count("acme") == 1 and await notices.count("globex") == 0


async def test_a_stored_tenant_never_signs_with_the_default_keys(stores: Stores) -> None:
    """All its secrets retired, or none readable: read again, and if there is still no
    usable key, NoSigningKey (the delivery waits), never the default tenant's keys."""
    db = stores.jobs.database
    tenants = tenants_collection(db)
    await ensure_tenant(db, "acme")
    (old,) = await signing_secrets(db, "acme")
    soon = datetime.now(UTC) + timedelta(seconds=30)
    await tenants.update_one({"_id": "acme"}, {"$set": {"secrets.0.retire_at": soon}})
    clock = [datetime.now(UTC)]
    keys = TenantKeys(tenants, DEFAULT_KEYS, refresh_seconds=3600, now=lambda: clock[0])
    assert await keys.signing_keys("acme") == [secret_key(old.secret)]
    clock[0] += timedelta(seconds=31)
    with pytest.raises(NoSigningKey):
        await keys.signing_keys("acme")
    new = await rotate_secret(db, "acme", 0)  # read again at once, not after an hour
    assert await keys.signing_keys("acme") == [secret_key(new)]

    now = datetime.now(UTC)
    for name, stored in (("unreadable", [{"secret": "whsec_not base64!", "created_at": now,
                                          "retire_at": None}]),
                         ("emptied", [])):
        await tenants.insert_one({"_id": name, "created_at": now, "version": 1,
                                  "secrets": stored})
        with pytest.raises(NoSigningKey):
            await keys.signing_keys(name)
    assert await keys.signing_keys("never-stored") == DEFAULT_KEYS
