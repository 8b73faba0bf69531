"""``sendNotification``: SMS through Twilio's Messages API, or push through FCM HTTP v1.

Base URLs default to the real providers; point them elsewhere (a test server, a
gateway) with ``JOBQUEUE_SMS_PROVIDER_URL`` / ``JOBQUEUE_PUSH_PROVIDER_URL``. FCM takes
an access token (``JOBQUEUE_FCM_ACCESS_TOKEN``) or a service-account file, exchanged for
a token (signed JWT, RS256) and cached until shortly before it expires.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from pydantic import Field, ValidationInfo, field_validator

from services.worker.handlers.common import Payload, check_provider_answer
from shared.jobtypes import JobContext, PermanentError, job_type

E164 = re.compile(r"^\+[1-9]\d{6,14}$")
FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
MAX_DATA_BYTES = 4096
"""FCM's own limit on a message's data payload."""


class SendNotification(Payload):
    channel: Literal["push", "sms"]
    to: str = Field(min_length=1, max_length=4096,
                    description="E.164 phone number (sms) or device registration token (push)")
    title: str | None = Field(None, max_length=200)
    message: str = Field(min_length=1, max_length=4000)
    data: dict[str, str] | None = None

    @field_validator("data")
    @classmethod
    def _data_fits(cls, data: dict[str, str] | None) -> dict[str, str] | None:
        size = sum(len(k.encode()) + len(v.encode()) for k, v in (data or {}).items())
        if size > MAX_DATA_BYTES:
            raise ValueError(f"data holds at most {MAX_DATA_BYTES} bytes of keys and values")
        return data

    @field_validator("to")
    @classmethod
    def _phone_for_sms(cls, to: str, info: ValidationInfo) -> str:
        if info.data.get("channel") == "sms" and not E164.match(to):
            raise ValueError("an SMS recipient is an E.164 number like +14155550123")
        return to


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass
class _CachedToken:
    value: str
    expires_at: float


_tokens: dict[str, _CachedToken] = {}


async def fcm_access_token(ctx: JobContext) -> tuple[str, str]:
    """(access token, project id) from settings or the service-account file."""
    s = ctx.settings
    if s.fcm_access_token:
        if not s.fcm_project_id:
            raise PermanentError("set JOBQUEUE_FCM_PROJECT_ID to send push notifications")
        return s.fcm_access_token, s.fcm_project_id
    if not s.fcm_service_account_file:
        raise PermanentError("push is not configured: set JOBQUEUE_FCM_ACCESS_TOKEN or "
                             "JOBQUEUE_FCM_SERVICE_ACCOUNT_FILE")
    account = json.loads(await asyncio.to_thread(Path(s.fcm_service_account_file).read_text))
    project = s.fcm_project_id or account["project_id"]
    cached = _tokens.get(account["client_email"])
    if cached and cached.expires_at > time.time() + 60:
        return cached.value, project
    token_uri = account.get("token_uri", GOOGLE_TOKEN_URI)
    now = int(time.time())
    header = _b64url(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    claims = _b64url(json.dumps({"iss": account["client_email"], "scope": FCM_SCOPE,
                                 "aud": token_uri, "iat": now, "exp": now + 3600}).encode())
    key = serialization.load_pem_private_key(account["private_key"].encode(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise PermanentError("the service account's private key is not an RSA key")
    signature = key.sign(f"{header}.{claims}".encode(), padding.PKCS1v15(), hashes.SHA256())
    response = await ctx.http.post(token_uri, data={
        "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
        "assertion": f"{header}.{claims}.{_b64url(signature)}"})
    check_provider_answer("the OAuth token endpoint", response)
    answer = response.json()
    _tokens[account["client_email"]] = _CachedToken(
        answer["access_token"], time.time() + float(answer.get("expires_in", 3600)))
    return answer["access_token"], project


async def send_sms(payload: SendNotification, ctx: JobContext) -> dict[str, Any]:
    s = ctx.settings
    if not (s.twilio_account_sid and s.twilio_auth_token and s.twilio_from):
        raise PermanentError("SMS is not configured: set JOBQUEUE_TWILIO_ACCOUNT_SID, "
                             "JOBQUEUE_TWILIO_AUTH_TOKEN and JOBQUEUE_TWILIO_FROM")
    text = f"{payload.title}\n{payload.message}" if payload.title else payload.message
    response = await ctx.http.post(
        f"{s.sms_provider_url.rstrip('/')}/2010-04-01/Accounts/{s.twilio_account_sid}"
        "/Messages.json",
        data={"To": payload.to, "From": s.twilio_from, "Body": text},
        auth=(s.twilio_account_sid, s.twilio_auth_token))
    check_provider_answer("Twilio", response)
    answer = response.json()
    return {"provider": "twilio", "id": answer.get("sid"), "status": answer.get("status")}


async def send_push(payload: SendNotification, ctx: JobContext) -> dict[str, Any]:
    token, project = await fcm_access_token(ctx)
    message: dict[str, Any] = {"token": payload.to,
                               "notification": {"body": payload.message}}
    if payload.title:
        message["notification"]["title"] = payload.title
    if payload.data:
        message["data"] = payload.data
    response = await ctx.http.post(
        f"{ctx.settings.push_provider_url.rstrip('/')}/v1/projects/{project}/messages:send",
        json={"message": message}, headers={"Authorization": f"Bearer {token}"})
    check_provider_answer("FCM", response)
    return {"provider": "fcm", "id": response.json().get("name")}


@job_type("sendNotification", payload=SendNotification, timeout_seconds=60)
async def send_notification(payload: SendNotification, ctx: JobContext) -> dict[str, Any]:
    if payload.channel == "sms":
        return await send_sms(payload, ctx)
    return await send_push(payload, ctx)
