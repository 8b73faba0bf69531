"""Which keys sign a delivery: the job's tenant's (see shared.tenants), read through a
small cache so the notifier pays at most one MongoDB round trip per tenant per refresh
interval, not one per event; a rotation announced in Redis is read at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError
from redis.exceptions import RedisError

from shared.logs import get_log
from shared.tenants import DEFAULT_TENANT, RotationNotices, stored_secrets
from webhooks.signing import secret_key

log = get_log(__name__)


class NoSigningKey(LookupError):
    """A stored tenant has no secret that may sign now: nothing is sent for it (its
    delivery is tried again later); it is never signed with the default tenant's keys."""

    def __init__(self, tenant: str) -> None:
        super().__init__(f"tenant {tenant!r} has no usable signing secret")
        self.tenant = tenant


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


@dataclass(frozen=True)
class _Cached:
    stored: bool
    """Whether the tenant is stored; one that is not signs with the default keys."""
    keys: list[tuple[bytes, datetime | None]]
    """Each stored key with the moment it retires (None: it does not)."""
    fetched: float
    """``time.monotonic()`` when read from MongoDB (or last tried)."""
    notice: int | None
    """The tenant's rotation count in Redis, read just before (None: not known)."""

    def active(self, now: datetime) -> list[bytes]:
        return [key for key, retire_at in self.keys if retire_at is None or retire_at > now]


class TenantKeys:
    """Each tenant's active keys; the default tenant's (and a tenant's that is not
    stored at all) are ``default_keys``, from ``JOBQUEUE_WEBHOOK_SECRET``.

    A tenant's stored secrets are read on first use and again once ``refresh_seconds``
    old, one read at a time per tenant; with ``notices``, also as soon as a rotation of
    the tenant is announced there (one Redis read per call), so a rotation applies to
    every delivery that starts after its announcement. Retirement is checked on every
    call: a key whose known retire time has passed never signs. A stored tenant left
    with no usable key (all retired, or unreadable) is read again; if there is still
    none, :class:`NoSigningKey` (never the default keys). If a periodic refresh fails
    the keys already known are used until the next one; if the read for an announced
    rotation fails, the error is raised (the delivery waits for the next attempt)."""

    def __init__(self, tenants: AsyncCollection[dict[str, Any]], default_keys: list[bytes],
                 refresh_seconds: float = 30.0,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC),
                 notices: RotationNotices | None = None) -> None:
        if not default_keys:
            raise ValueError("the default tenant needs a signing key")
        self.tenants = tenants
        self.default_keys = default_keys
        self.refresh_seconds = refresh_seconds
        self.now = now
        self.notices = notices
        self._cache: dict[str, _Cached] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def signing_keys(self, tenant: str) -> list[bytes]:
        if tenant == DEFAULT_TENANT:
            return self.default_keys
        notice = await self._notice(tenant)
        cached = self._cache.get(tenant)
        read = cached is None or self._stale(cached) or self._rotated(cached, notice)
        if cached is None or read:
            cached = await self._refresh(tenant, cached, notice)
        if not cached.stored:
            return self.default_keys
        keys = cached.active(self.now())
        if not keys and not read:
            cached = await self._refresh(tenant, cached, notice)
            keys = cached.active(self.now())
        if not keys:
            raise NoSigningKey(tenant)
        return keys

    async def _notice(self, tenant: str) -> int | None:
        if self.notices is None:
            return None
        try:
            return await self.notices.count(tenant)
        except (RedisError, OSError) as exc:
            log.warning("webhook.rotation_notice_unread", tenant=tenant, error=str(exc))
            return None

    def _stale(self, cached: _Cached) -> bool:
        return time.monotonic() - cached.fetched >= self.refresh_seconds

    @staticmethod
    def _rotated(cached: _Cached, notice: int | None) -> bool:
        return notice is not None and notice != cached.notice

    async def _refresh(self, tenant: str, seen: _Cached | None, notice: int | None
                       ) -> _Cached:
        """Read the tenant, unless another call did since ``seen`` was cached."""
        async with self._locks.setdefault(tenant, asyncio.Lock()):
            cached = self._cache.get(tenant)
            if (cached is not None and cached is not seen and not self._stale(cached)
                    and not self._rotated(cached, notice)):
                return cached  # read by another delivery while this one waited
            try:
                stored = await stored_secrets(self.tenants, tenant)
            except (PyMongoError, OSError) as exc:
                if cached is None or self._rotated(cached, notice):
                    raise
                log.warning("webhook.tenant_keys_stale", tenant=tenant, error=str(exc))
                # NOTE: tried again at the next refresh, not per event
                kept = _Cached(cached.stored, cached.keys, time.monotonic(), cached.notice)
                self._cache[tenant] = kept
                return kept
            keys: list[tuple[bytes, datetime | None]] = []
            for secret in stored or []:
                try:
                    keys.append((secret_key(secret.secret), secret.retire_at))
                except ValueError:
                    log.error("webhook.tenant_secret_invalid", tenant=tenant)
            fresh = _Cached(stored is not None, keys, time.monotonic(), notice)
            self._cache[tenant] = fresh
            return fresh
