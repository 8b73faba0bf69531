"""Signatures verify with the reference `standardwebhooks` library, and ours rejects what
it must."""

import json
import time

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from shared.errors import InvalidSignature
from tests.support import TEST_WEBHOOK_SECRET
from webhooks import signature_headers, verify
from webhooks.signing import parse_secrets

OTHER_SECRET = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
BODY = json.dumps({"id": "evt_1", "type": "job.completed", "data": {}}).encode()


def test_reference_library_accepts_our_signature() -> None:
    headers = signature_headers(parse_secrets(TEST_WEBHOOK_SECRET), "evt_1", BODY)
    assert Webhook(TEST_WEBHOOK_SECRET).verify(BODY, headers)["id"] == "evt_1"
    assert verify(TEST_WEBHOOK_SECRET, BODY, headers)["type"] == "job.completed"


def test_rotation_signs_with_every_secret() -> None:
    keys = parse_secrets(f"{OTHER_SECRET} {TEST_WEBHOOK_SECRET}")
    headers = signature_headers(keys, "evt_1", BODY)
    assert len(headers["webhook-signature"].split()) == 2
    for secret in (OTHER_SECRET, TEST_WEBHOOK_SECRET):
        Webhook(secret).verify(BODY, headers)
        verify(secret, BODY, headers)


@pytest.mark.parametrize("tamper", ["body", "secret", "stale", "missing"])
def test_tampering_is_rejected(tamper: str) -> None:
    keys = parse_secrets(TEST_WEBHOOK_SECRET)
    stamp = int(time.time()) - (600 if tamper == "stale" else 0)
    headers = signature_headers(keys, "evt_1", BODY, timestamp=stamp)
    body, secret = BODY, TEST_WEBHOOK_SECRET
    if tamper == "body":
        body = BODY.replace(b"completed", b"failed")
    if tamper == "secret":
        secret = OTHER_SECRET
    if tamper == "missing":
        del headers["webhook-signature"]
    with pytest.raises(InvalidSignature):
        verify(secret, body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, headers)
