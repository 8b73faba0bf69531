"""Which keys sign a delivery: the job's tenant's (see shared.tenants), read through a
small cache so the notifier pays at most one MongoDB round trip per tenant per refresh
interval, not one per event."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError

from shared.logs import get_log
from shared.tenants import DEFAULT_TENANT, stored_secrets
from webhooks.signing import secret_key

log = get_log(__name__)


class KeySource(Protocol):
    async def signing_keys(self, tenant: str) -> list[bytes]:
        """The keys to sign a delivery for ``tenant``'s job with, at least one."""
        ...


@dataclass(frozen=True)
class StaticKeys:
    """The same keys for every tenant."""

    keys: list[bytes]

    async def signing_keys(self, tenant: str) -> list[bytes]:
        return self.keys


@dataclass
class _Cached:
    keys: list[tuple[bytes, datetime | None]]
    """Each stored key with the moment it retires (None: it does not)."""
    fetched: float
    """``time.monotonic()`` when read from MongoDB."""


class TenantKeys:
    """Each tenant's active keys; the default tenant's (and a tenant's with nothing
    stored) are ``default_keys``, from ``JOBQUEUE_WEBHOOK_SECRET``.

    A tenant's stored secrets are read on first use and again once ``refresh_seconds``
    old, one read at a time per tenant. Retirement is checked on every call, so a
    rotated-out key stops signing when its grace ends, not at the next refresh. If a
    refresh fails the keys already known are used until the next one."""

    def __init__(self, tenants: AsyncCollection[dict[str, Any]], default_keys: list[bytes],
                 refresh_seconds: float = 30.0,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        if not default_keys:
            raise ValueError("the default tenant needs a signing key")
        self.tenants = tenants
        self.default_keys = default_keys
        self.refresh_seconds = refresh_seconds
        self.now = now
        self._cache: dict[str, _Cached] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def signing_keys(self, tenant: str) -> list[bytes]:
        if tenant == DEFAULT_TENANT:
            return self.default_keys
        cached = self._cache.get(tenant)
        if cached is None or self._stale(cached):
            cached = await self._refresh(tenant)
        now = self.now()
        keys = [key for key, retire_at in cached.keys if retire_at is None or retire_at > now]
        return keys or self.default_keys

    def _stale(self, cached: _Cached) -> bool:
        return time.monotonic() - cached.fetched >= self.refresh_seconds

    async def _refresh(self, tenant: str) -> _Cached:
        async with self._locks.setdefault(tenant, asyncio.Lock()):
            cached = self._cache.get(tenant)
            if cached is not None and not self._stale(cached):
                return cached  # refreshed by another delivery while this one waited
            try:
                stored = await stored_secrets(self.tenants, tenant)
            except (PyMongoError, OSError) as exc:
                if cached is None:
                    raise
                log.warning("webhook.tenant_keys_stale", tenant=tenant, error=str(exc))
                cached.fetched = time.monotonic()  # NOTE: tried again next refresh, not per event
                return cached
            keys: list[tuple[bytes, datetime | None]] = []
            for secret in stored or []:
                try:
                    keys.append((secret_key(secret.secret), secret.retire_at))
                except ValueError:
                    log.error("webhook.tenant_secret_invalid", tenant=tenant)
            fresh = _Cached(keys, time.monotonic())
            self._cache[tenant] = fresh
            return fresh
