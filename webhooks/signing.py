"""Signing per the Standard Webhooks spec.

Headers: ``webhook-id`` (the event id, the same on every retry), ``webhook-timestamp``
(seconds, this attempt), ``webhook-signature``: space-separated ``v1,<base64 HMAC-SHA256
of "id.timestamp.body">``, one per secret, so receivers can rotate secrets. Secrets are
``whsec_<base64 key>``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

from shared.errors import InvalidSignature

PREFIX = "whsec_"
DEFAULT_TOLERANCE_SECONDS = 300


def secret_key(secret: str) -> bytes:
    raw = secret[len(PREFIX):] if secret.startswith(PREFIX) else secret
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except ValueError as exc:
        raise ValueError("a webhook secret is 'whsec_' followed by base64") from exc
    if not key:
        raise ValueError("a webhook secret may not be empty")
    return key


def parse_secrets(value: str) -> list[bytes]:
    """``JOBQUEUE_WEBHOOK_SECRET``: one or more space-separated ``whsec_…`` secrets."""
    return [secret_key(part) for part in value.split()]


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def signature_headers(keys: Iterable[bytes], msg_id: str, body: bytes,
                      timestamp: int | None = None) -> dict[str, str]:
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(k, msg_id, timestamp, body) for k in keys),
    }


def verify(secret: str, body: bytes, headers: Mapping[str, str], *,
           tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
           now: float | None = None) -> Any:
    """Check a delivery and return its parsed JSON body; raise InvalidSignature."""
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id, stamp, signatures = (lower.get("webhook-id"), lower.get("webhook-timestamp"),
                                 lower.get("webhook-signature"))
    if not (msg_id and stamp and signatures):
        raise InvalidSignature("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise InvalidSignature("webhook-timestamp is not a number") from None
    if abs((time.time() if now is None else now) - timestamp) > tolerance_seconds:
        raise InvalidSignature("webhook-timestamp is outside the tolerance")
    expected = sign(secret_key(secret), msg_id, timestamp, body)
    if not any(hmac.compare_digest(expected, given) for given in signatures.split()):
        raise InvalidSignature("no signature matches the secret")
    return json.loads(body)
