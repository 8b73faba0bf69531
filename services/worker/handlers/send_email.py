"""``sendEmail``: a message over SMTP (aiosmtplib).

A 4xx SMTP answer or a connection failure is retried; a 5xx answer is permanent.
"""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

import aiosmtplib
from pydantic import EmailStr, Field, field_validator, model_validator

from services.worker.handlers.common import Payload
from shared.jobtypes import JobContext, PermanentError, job_type

MAX_RECIPIENTS = 100
"""to, cc and bcc together (most SMTP servers refuse more in one message)."""
MAX_BODY_BYTES = 1024 * 1024
"""body and html together, UTF-8."""
LINE_BREAKS = frozenset("\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")
"""What Python's email package reads as the end of a header line (str.splitlines)."""


class SendEmail(Payload):
    to: list[EmailStr] = Field(min_length=1, max_length=100,
                               description="one address or a list of them")
    subject: str = Field(min_length=1, max_length=998)
    body: str = Field(max_length=1_000_000)
    html: str | None = Field(None, max_length=1_000_000)
    cc: list[EmailStr] = Field(default_factory=list, max_length=100)
    bcc: list[EmailStr] = Field(default_factory=list, max_length=100)
    reply_to: EmailStr | None = None

    @field_validator("to", mode="before")
    @classmethod
    def _one_or_many(cls, to: Any) -> Any:
        return [to] if isinstance(to, str) else to

    @field_validator("subject")
    @classmethod
    def _one_header_line(cls, subject: str) -> str:
        """A line break would start a new header (``hi\\r\\nBcc: ...``); the email
        package refuses it when the message is built, so refuse it here, at submit.
        (The addresses are validated as addresses, which cannot hold one.)"""
        if LINE_BREAKS.intersection(subject):
            raise ValueError("the subject is one header line: no CR, LF or other line "
                             "breaks")
        return subject

    @model_validator(mode="after")
    def _bounded(self) -> SendEmail:
        if len(self.recipients()) > MAX_RECIPIENTS:
            raise ValueError(f"at most {MAX_RECIPIENTS} recipients in to, cc and bcc "
                             "together")
        size = len(self.body.encode()) + len((self.html or "").encode())
        if size > MAX_BODY_BYTES:
            raise ValueError(f"body and html hold at most {MAX_BODY_BYTES} bytes together")
        return self

    def recipients(self) -> list[str]:
        return [*self.to, *self.cc, *self.bcc]


def build_message(payload: SendEmail, sender: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(payload.to)
    if payload.cc:
        message["Cc"] = ", ".join(payload.cc)
    if payload.reply_to:
        message["Reply-To"] = payload.reply_to
    message["Subject"] = payload.subject
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    message.set_content(payload.body)
    if payload.html:
        message.add_alternative(payload.html, subtype="html")
    return message  # Bcc travels only in the envelope


def _permanent_if_5xx(code: int, text: str) -> None:
    if code >= 500:
        raise PermanentError(f"SMTP {code}: {text}")


@job_type("sendEmail", payload=SendEmail, timeout_seconds=120)
async def send_email(payload: SendEmail, ctx: JobContext) -> dict[str, Any]:
    s = ctx.settings
    message = build_message(payload, s.smtp_from)
    recipients = payload.recipients()
    try:
        refused, _ = await aiosmtplib.send(
            message, recipients=recipients, hostname=s.smtp_host, port=s.smtp_port,
            username=s.smtp_username, password=s.smtp_password, use_tls=s.smtp_ssl,
            start_tls=s.smtp_starttls, timeout=s.http_timeout_seconds)
    except aiosmtplib.SMTPRecipientsRefused as exc:
        codes = [r.code for r in exc.recipients]
        if codes and min(codes) >= 500:
            raise PermanentError(f"every recipient refused: {exc}") from None
        raise
    except aiosmtplib.SMTPResponseException as exc:
        _permanent_if_5xx(exc.code, exc.message)
        raise
    accepted = [r for r in recipients if r not in refused]
    ctx.log.info("email.sent", accepted=len(accepted), refused=len(refused))
    return {"messageId": message["Message-ID"], "accepted": accepted,
            "refused": {r: f"{answer.code} {answer.message}" for r, answer in refused.items()}}
