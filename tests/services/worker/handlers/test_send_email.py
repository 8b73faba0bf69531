"""sendEmail against a real SMTP server (aiosmtpd) on loopback."""

from __future__ import annotations

import email
from collections.abc import Iterator
from email import policy
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller

from services.dev.embedded import free_port
from services.runtime import Stores
from shared.settings import Settings


class Mailbox:
    """An SMTP handler that keeps what it receives and answers DATA from a script."""

    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.answers: list[str] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        answer = self.answers.pop(0) if self.answers else "250 OK"
        if answer.startswith("250"):
            self.messages.append(envelope)
        return answer


@pytest.fixture
def mailbox(settings: Settings) -> Iterator[Mailbox]:
    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    settings.smtp_host, settings.smtp_port = "127.0.0.1", port
    settings.smtp_from = "jobs@example.com"
    try:
        yield box
    finally:
        controller.stop()


async def test_message_arrives_with_headers_and_body(mailbox: Mailbox, run_job: Any) -> None:
    doc = await run_job("sendEmail", {
        "to": ["ada@example.com", "bob@example.com"], "cc": ["cy@example.com"],
        "bcc": ["dee@example.com"], "replyTo": "help@example.com", "subject": "Hello",
        "body": "plain text body", "html": "<p>html body</p>"})
    assert doc["status"] == "COMPLETED", doc.get("error")
    assert doc["result"]["accepted"] == ["ada@example.com", "bob@example.com",
                                         "cy@example.com", "dee@example.com"]
    (envelope,) = mailbox.messages
    assert envelope.mail_from == "jobs@example.com"
    assert sorted(envelope.rcpt_tos) == ["ada@example.com", "bob@example.com",
                                         "cy@example.com", "dee@example.com"]
    message = email.message_from_bytes(envelope.content, policy=policy.default)
    assert message["Subject"] == "Hello" and message["Reply-To"] == "help@example.com"
    assert message["To"] == "ada@example.com, bob@example.com"
    assert message["Cc"] == "cy@example.com" and message["Bcc"] is None
    assert message["Message-ID"] == doc["result"]["messageId"]
    assert message.get_body(("plain",)).get_content().strip() == "plain text body"
    assert message.get_body(("html",)).get_content().strip() == "<p>html body</p>"


async def test_4xx_is_retried_then_delivered(mailbox: Mailbox, run_job: Any) -> None:
    mailbox.answers = ["451 4.3.0 try again later"]
    doc = await run_job("sendEmail", {"to": "ada@example.com", "subject": "s", "body": "b"})
    assert doc["status"] == "COMPLETED" and doc["retries"] == 1
    assert "451" in doc["history"][2]["error"]["message"]
    assert len(mailbox.messages) == 1


async def test_5xx_fails_after_one_attempt(mailbox: Mailbox, run_job: Any) -> None:
    mailbox.answers = ["550 5.1.1 no such user"]
    doc = await run_job("sendEmail", {"to": "ada@example.com", "subject": "s", "body": "b"})
    assert doc["status"] == "FAILED" and doc["attempt"] == 1
    assert doc["error"]["type"] == "PermanentError" and "550" in doc["error"]["message"]


@pytest.mark.parametrize(("field", "value"), [
    ("subject", "hi\r\nBcc: v@example.com"), ("subject", "hi\nthere"), ("subject", "a\rb"),
    ("subject", "a\u2028b"), ("replyTo", "a@example.com\r\nBcc: v@example.com"),
    ("to", "a@example.com\nBcc: v@example.com"),
])
async def test_a_line_break_in_a_header_is_422_at_submit(
        api: httpx.AsyncClient, stores: Stores, field: str, value: str) -> None:
    payload = {"to": "ada@example.com", "subject": "s", "body": "b", field: value}
    r = await api.post("/jobs", json={"jobType": "sendEmail", "payload": payload})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"][0]["field"].startswith(f"payload.{field}")
    assert await stores.jobs.count_documents({}) == 0
