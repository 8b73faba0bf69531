"""sendNotification against a local server speaking the Twilio Messages API and FCM
HTTP v1 (and Google's OAuth token endpoint for a service account)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from shared.settings import Settings
from tests.receiver import Receiver, receiver

SID, TOKEN = "AC0123456789abcdef0123456789abcdef", "twilio-secret"
MESSAGES = f"/2010-04-01/Accounts/{SID}/Messages.json"
FCM_SEND = "/v1/projects/demo-project/messages:send"


@pytest.fixture
def provider(settings: Settings) -> Iterator[Receiver]:
    with receiver() as r:
        settings.sms_provider_url = settings.push_provider_url = r.url
        settings.twilio_account_sid, settings.twilio_auth_token = SID, TOKEN
        settings.twilio_from = "+15005550006"
        settings.fcm_project_id = "demo-project"
        settings.fcm_access_token = "ya29.test-token"
        yield r


async def test_sms_speaks_twilio(provider: Receiver, run_job: Any) -> None:
    provider.on(MESSAGES, (201, {"content-type": "application/json"},
                           b'{"sid": "SM123", "status": "queued"}'))
    doc = await run_job("sendNotification", {"channel": "sms", "to": "+14155550123",
                                             "title": "Hi", "message": "Your code is 42"})
    assert doc["status"] == "COMPLETED", doc.get("error")
    assert doc["result"] == {"provider": "twilio", "id": "SM123", "status": "queued"}
    (request,) = provider.at(MESSAGES)
    assert request.method == "POST"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert request.headers["authorization"] == "Basic " + base64.b64encode(
        f"{SID}:{TOKEN}".encode()).decode()
    form = parse_qs(request.body.decode())
    assert form == {"To": ["+14155550123"], "From": ["+15005550006"],
                    "Body": ["Hi\nYour code is 42"]}


async def test_push_speaks_fcm_v1(provider: Receiver, run_job: Any) -> None:
    provider.on(FCM_SEND, (200, {"content-type": "application/json"},
                           b'{"name": "projects/demo-project/messages/0:1"}'))
    doc = await run_job("sendNotification", {"channel": "push", "to": "device-token-1",
                                             "title": "Hello", "message": "Body",
                                             "data": {"orderId": "7"}})
    assert doc["result"] == {"provider": "fcm", "id": "projects/demo-project/messages/0:1"}
    (request,) = provider.at(FCM_SEND)
    assert request.headers["authorization"] == "Bearer ya29.test-token"
    assert json.loads(request.body) == {"message": {
        "token": "device-token-1", "notification": {"title": "Hello", "body": "Body"},
        "data": {"orderId": "7"}}}


async def test_429_retry_after_is_honoured_and_4xx_is_permanent(
        provider: Receiver, run_job: Any) -> None:
    provider.on(MESSAGES, (429, {"retry-after": "1"}, b"slow down"),
                (201, {"content-type": "application/json"}, b'{"sid": "SM9"}'))
    doc = await run_job("sendNotification", {"channel": "sms", "to": "+14155550123",
                                             "message": "m"})
    assert doc["status"] == "COMPLETED" and doc["retries"] == 1
    first, second = provider.at(MESSAGES)
    assert second.at - first.at >= 0.95
    provider.on(FCM_SEND, (400, {}, b'{"error": "INVALID_ARGUMENT"}'))
    doc = await run_job("sendNotification", {"channel": "push", "to": "bad", "message": "m"})
    assert doc["status"] == "FAILED" and doc["attempt"] == 1
    assert "INVALID_ARGUMENT" in doc["error"]["message"]


@pytest.fixture
def service_account(provider: Receiver, settings: Settings,
                    tmp_path: Path) -> rsa.RSAPrivateKey:
    """Push configured by a service-account file whose token_uri is the local server."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    account = tmp_path / "sa.json"
    account.write_text(json.dumps({
        "type": "service_account", "project_id": "demo-project", "private_key": pem,
        "client_email": "pusher@demo-project.iam.gserviceaccount.com",
        "token_uri": provider.url + "/token"}))
    settings.fcm_access_token = None
    settings.fcm_service_account_file = account
    return key


async def test_service_account_token_is_fetched_with_a_signed_jwt(
        provider: Receiver, service_account: rsa.RSAPrivateKey, run_job: Any) -> None:
    provider.on("/token", (200, {"content-type": "application/json"},
                           b'{"access_token": "ya29.from-jwt", "expires_in": 3600}'))
    provider.on(FCM_SEND, (200, {}, b'{"name": "projects/demo-project/messages/0:2"}'))
    doc = await run_job("sendNotification", {"channel": "push", "to": "t", "message": "m"})
    assert doc["status"] == "COMPLETED", doc.get("error")
    (token_request,) = provider.at("/token")
    form = parse_qs(token_request.body.decode())
    assert form["grant_type"] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
    header, claims, signature = form["assertion"][0].split(".")
    padded = signature + "=" * (-len(signature) % 4)
    service_account.public_key().verify(base64.urlsafe_b64decode(padded),
                                        f"{header}.{claims}".encode(),
                                        padding.PKCS1v15(), hashes.SHA256())
    body = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))
    assert body["aud"] == provider.url + "/token"
    assert body["scope"] == "https://www.googleapis.com/auth/firebase.messaging"
    assert provider.at(FCM_SEND)[0].headers["authorization"] == "Bearer ya29.from-jwt"
