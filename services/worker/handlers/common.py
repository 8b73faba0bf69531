"""What several built-in job types share: camelCase payloads, provider answers, and
describing a stored artifact in a result."""

from __future__ import annotations

import time
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, ValidationInfo
from pydantic.alias_generators import to_camel

from shared.errors import PermanentError, Retry
from shared.jobtypes import JobContext
from shared.models import Artifact
from shared.outbound import OutboundGuard, UrlRefused
from shared.retry_after import retry_after_seconds
from shared.settings import Settings


class Payload(BaseModel):
    """Payload fields are camelCase on the wire (``replyTo``), snake_case in Python."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True,
                              extra="forbid")


def settings_of(info: ValidationInfo) -> Settings | None:
    """The settings the API and the worker pass as validation context."""
    settings = (info.context or {}).get("settings")
    return settings if isinstance(settings, Settings) else None


def checked_url(url: str, info: ValidationInfo) -> str:
    """Refuse, at validation, URLs the outbound guard can refuse without DNS."""
    settings = settings_of(info)
    allowed = settings.scrape_allowed_hosts if settings else []
    try:
        OutboundGuard(allowed).check_literal(url)
    except UrlRefused as exc:
        raise ValueError(exc.message) from None  # pydantic then names the field
    return url


def check_provider_answer(provider: str, response: httpx.Response) -> None:
    """429 and 5xx are retried (honouring Retry-After); any other 4xx is permanent."""
    if response.is_success:
        return
    detail = f"{provider} answered {response.status_code}: {response.text[:300]}"
    if response.status_code == 429 or response.status_code >= 500:
        raise Retry(detail, delay=retry_after_seconds(response.headers.get("retry-after"),
                                                      time.time()))
    raise PermanentError(detail)


def described(artifact: Artifact, ctx: JobContext, **extra: Any) -> dict[str, Any]:
    return {**artifact.model_dump(by_alias=True), **extra,
            "downloadPath": ctx.artifacts.download_path(artifact.name)}
