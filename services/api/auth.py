"""Who is calling: API keys, protected mode, and the caller's tenant and scopes.

:class:`AuthGate` sees every request before the app does (so a route added later is
guarded too); only ``/healthz`` and ``/readyz`` pass untouched. It decides:

- ``JOBQUEUE_AUTH=disabled``: no key is read; the caller may do everything, and what it
  submits belongs to the default tenant.
- ``Authorization: Bearer <key>``: the key's tenant and scopes, or 401 for a key that
  is unknown or revoked.
- no key presented: 401 once any key exists. Before the first key exists (protected
  mode, after Redis's), loopback clients may do everything as the default tenant and
  any other client gets 403 ``protected_mode``. Loopback means the connection's peer
  address (``scope["client"]``). No forwarding header is read here; uvicorn applies
  X-Forwarded-For only to connections from 127.0.0.1, so it can make a local
  connection count as remote, never a remote one local.

What a request needs beyond that (a scope) is checked by the routes' dependencies
(:func:`require`). Lookups are cached per process for ``JOBQUEUE_API_KEY_CACHE_SECONDS``
(:class:`KeyRing`): a revoke takes effect on every API process within that time, and
so does the end of protected mode after the first key is made.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from fastapi import Request
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError
from starlette.types import ASGIApp, Receive, Scope, Send

from services.api.errors import error_response
from shared import apikeys
from shared.apikeys import KeyInfo
from shared.apikeys import Scope as KeyScope
from shared.errors import ApiError, Forbidden, StoreUnavailable, Unauthorized
from shared.logs import get_log
from shared.ratelimit import Rate
from shared.tenants import DEFAULT_TENANT

log = get_log(__name__)
T = TypeVar("T")

OPEN_PATHS = frozenset({"/healthz", "/readyz"})
CACHED_KEYS = 10_000
"""Known keys (revoked ones included) a process remembers at most."""
CACHED_UNKNOWN = 10_000
"""Unknown keys a process remembers at most, apart from the known ones: a flood of
made-up (well-formed) keys costs MongoDB one read per key and this process bounded
memory, and never pushes a known key out."""


@dataclass(frozen=True)
class Principal:
    """The caller: the tenant its jobs belong to, what it may do, and its key."""

    tenant: str
    scopes: frozenset[KeyScope]
    key_id: str | None = None
    """None without a key (authentication disabled, or protected mode on loopback)."""
    submit_rate: Rate | None = None

    @property
    def admin(self) -> bool:
        return KeyScope.ADMIN in self.scopes

    def mine(self) -> dict[str, Any]:
        """The filter that limits a query to the jobs this caller may see."""
        return {} if self.admin else {"tenant": self.tenant}


ANONYMOUS = Principal(DEFAULT_TENANT, frozenset(KeyScope))


class KeyRing:
    """Finds keys by what requests present, remembering answers for ``ttl`` seconds.

    Known and unknown keys are remembered apart, each up to its own bound, so made-up
    keys can only ever push out other made-up keys. A key of the wrong shape (see
    :func:`shared.apikeys.well_formed`) is unknown without a read."""

    def __init__(self, keys: AsyncCollection[dict[str, Any]], ttl: float,
                 clock: Callable[[], float] = time.monotonic,
                 max_known: int = CACHED_KEYS, max_unknown: int = CACHED_UNKNOWN) -> None:
        self._keys = keys
        self._ttl = ttl
        self._clock = clock
        # NOTE: cached by hash: bounded size, no secrets; dicts keep insertion order,
        # so the first entry is the oldest.
        self._known = _Cache[KeyInfo](max_known)
        self._unknown = _Cache[None](max_unknown)
        self._any_checked_at: float | None = None
        self._any = False

    async def find(self, key: str) -> KeyInfo | None:
        """The key's record (revoked or not), or None when no such key was made."""
        if not apikeys.well_formed(key):
            return None
        now = self._clock()
        key_hash = apikeys.hash_key(key)
        if (known := self._known.get(key_hash, now)) is not None:
            return known[0]
        if self._unknown.get(key_hash, now) is not None:
            return None
        info = await apikeys.find_key(self._keys, key_hash)
        if info is None:
            self._unknown.put(key_hash, None, now + self._ttl, now)
        else:
            self._known.put(key_hash, info, now + self._ttl, now)
            self._any = True
        return info

    async def any_key_made(self) -> bool:
        """Has any key been made? Once true it stays true (keys are never deleted)."""
        now = self._clock()
        if not self._any and (self._any_checked_at is None
                              or now - self._any_checked_at >= self._ttl):
            self._any = await apikeys.any_key_made(self._keys)
            self._any_checked_at = now
        return self._any


class _Cache(Generic[T]):
    """At most ``size`` values, each until its expiry. Every entry lives as long, so
    the oldest (first) entry expires first: when full, it is the one that goes."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: dict[str, tuple[float, T]] = {}

    def get(self, key: str, now: float) -> tuple[T] | None:
        """``(value,)`` while it has not expired, else None."""
        entry = self._entries.get(key)
        if entry is None or entry[0] <= now:
            return None
        return (entry[1],)

    def put(self, key: str, value: T, until: float, now: float) -> None:
        self._entries.pop(key, None)
        while self._entries:
            oldest = next(iter(self._entries))
            if len(self._entries) < self._size and self._entries[oldest][0] > now:
                break
            del self._entries[oldest]
        self._entries[key] = (until, value)


def is_loopback(client: tuple[str, int] | None) -> bool:
    """The peer is this machine (127.0.0.0/8, ::1, or ::ffff:127.x). Not a Unix socket:
    without a peer address nothing says who is calling."""
    if client is None:
        return False
    try:
        address = ipaddress.ip_address(client[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def bearer_key(scope: Scope) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` header; "" for any other value."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            kind, _, key = value.decode("latin-1").strip().partition(" ")
            return key.strip() if kind.lower() == "bearer" else ""
    return None


class AuthGate:
    """Answers 401/403 for requests that may not reach the app; hands the others their
    :class:`Principal` in ``request.state.principal``."""

    def __init__(self, app: ASGIApp, enabled: bool) -> None:
        self.app = app
        self.enabled = enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        principal = ANONYMOUS
        if self.enabled:
            keyring: KeyRing = scope["app"].state.context.keyring
            try:
                principal = await self._decide(keyring, scope)
            except PyMongoError as exc:
                log.warning("api.auth_store_unavailable", error=str(exc)[:300],
                            errorType=type(exc).__name__)
                await _refuse(StoreUnavailable(
                    "MongoDB is unreachable, so the API key cannot be checked; nothing "
                    "was changed, try again shortly"), scope, receive, send)
                return
            except ApiError as exc:
                await _refuse(exc, scope, receive, send)
                return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)

    @staticmethod
    async def _decide(keyring: KeyRing, scope: Scope) -> Principal:
        """The caller, or the ApiError that refuses it."""
        key = bearer_key(scope)
        if key is None:
            if await keyring.any_key_made():
                raise Unauthorized("this request needs an API key: send "
                                   "'Authorization: Bearer <key>'")
            if is_loopback(scope.get("client")):
                return ANONYMOUS
            raise Forbidden(
                "no API key exists yet, so this API answers clients on this machine only; "
                "create a key with `jobqueue keys create --tenant NAME` and send it as "
                "'Authorization: Bearer <key>', or set JOBQUEUE_AUTH=disabled",
                code="protected_mode")
        info = await keyring.find(key)
        if info is None or info.revoked_at is not None:
            raise Unauthorized("unknown or revoked API key")
        return Principal(info.tenant, apikeys.granted(info.scopes), info.key_id,
                         info.submit_rate)


async def _refuse(exc: ApiError, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer as the app's error handler would (the gate runs outside the app)."""
    response = error_response(exc.status_code, exc.code, exc.message, exc.details)
    response.headers.update(exc.headers or {})
    await response(scope, receive, send)


def require(needed: KeyScope) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency: the caller, if its key has scope ``needed`` (else 403)."""

    # NOTE: async although it never waits: FastAPI runs plain functions in a thread.
    async def check(request: Request) -> Principal:
        principal: Principal = request.state.principal
        if needed not in principal.scopes:
            raise Forbidden(f"this API key lacks the {needed.value!r} scope",
                            details={"required": needed.value,
                                     "scopes": sorted(principal.scopes)})
        return principal

    return check
