"""``scrapeWebsite``: fetch a page (httpx) and extract values by CSS selector (selectolax).

The URL goes through the outbound guard at submit and again on every hop at fetch time
(``JOBQUEUE_SCRAPE_ALLOWED_HOSTS`` names exceptions); robots.txt is respected unless
``JOBQUEUE_SCRAPE_RESPECT_ROBOTS=false``; redirects, time and size are bounded.

What extraction produces is bounded too (a few selectors matching every node of a page
of several MiB once built a result of hundreds of MiB before its size was checked): at
most :data:`MAX_VALUES_PER_SELECTOR` values a selector, each cut to
:data:`MAX_VALUE_CHARS` characters, and :data:`MAX_VALUES_BYTES` for all of them; past
any of these the result says ``valuesTruncated: true``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.robotparser import RobotFileParser

import httpx
from pydantic import Field, ValidationInfo, field_validator
from selectolax.lexbor import LexborHTMLParser as HTMLParser
from selectolax.lexbor import LexborNode as Node

from services.worker.handlers.common import Payload, checked_url
from shared.errors import Retry
from shared.jobtypes import JobContext, PermanentError, job_type
from shared.outbound import Fetched, OutboundGuard, fetch

ROBOTS_MAX_BYTES = 512 * 1024
MAX_VALUES_PER_SELECTOR = 1_000
MAX_VALUE_CHARS = 2_000
MAX_VALUES_BYTES = 512 * 1024
"""UTF-8 bytes of every extracted value together; extraction stops there."""


class ScrapeWebsite(Payload):
    url: str = Field(max_length=2048)
    selectors: dict[Annotated[str, Field(max_length=100)],
                    Annotated[str, Field(max_length=1000)]] = Field(default_factory=dict,
                                                                    max_length=50)
    attribute: str | None = Field(None, max_length=100,
                                  description="extract this attribute instead of the text")
    max_bytes: int | None = Field(None, ge=1, le=100 * 1024 * 1024)

    @field_validator("url")
    @classmethod
    def _url_allowed(cls, url: str, info: ValidationInfo) -> str:
        return checked_url(url, info)

    @field_validator("selectors")
    @classmethod
    def _selectors_parse(cls, selectors: dict[str, str]) -> dict[str, str]:
        probe = HTMLParser("<html></html>")
        for name, selector in selectors.items():
            try:
                probe.css(selector)
            except Exception:
                raise ValueError(f"selector {name!r} is not valid CSS: {selector!r}") from None
        return selectors


async def allowed_by_robots(ctx: JobContext, guard: OutboundGuard, url: str) -> bool:
    s = ctx.settings
    robots_url = str(httpx.URL(url).copy_with(path="/robots.txt", query=None, fragment=None))
    robots = await fetch(ctx.http, guard, robots_url, max_bytes=ROBOTS_MAX_BYTES,
                         max_redirects=s.scrape_max_redirects,
                         timeout_seconds=s.scrape_timeout_seconds,
                         headers={"user-agent": s.scrape_user_agent})
    if robots.status_code >= 500:
        raise Retry(f"robots.txt answered {robots.status_code}")
    if robots.status_code >= 400:
        return True  # no robots.txt: everything is allowed
    parser = RobotFileParser()
    parser.parse(robots.body.decode("utf-8", "replace").splitlines())
    return parser.can_fetch(s.scrape_user_agent, url)


def page_text(page: Fetched) -> str:
    """The body decoded by its declared charset; UTF-8 when that is missing or is not a
    text encoding Python knows (``charset=rot13``, ``charset=nosuch``)."""
    encoding = "utf-8"
    for part in ";".join(page.headers.get_list("content-type")).split(";"):
        if part.strip().lower().startswith("charset="):
            encoding = part.split("=", 1)[1].strip().strip("\"'") or encoding
    try:
        return page.body.decode(encoding, "replace")
    except (LookupError, ValueError):  # ValueError: codecs that refuse "replace", NULs
        return page.body.decode("utf-8", "replace")


@dataclass
class Extracted:
    values: dict[str, list[str | None]] = field(default_factory=dict)
    truncated: bool = False
    size: int = 0
    """UTF-8 bytes of the values so far."""

    def add(self, name: str, nodes: list[Node], attribute: str | None) -> None:
        found = self.values.setdefault(name, [])
        if len(nodes) > MAX_VALUES_PER_SELECTOR:
            self.truncated = True
        for node in nodes[:MAX_VALUES_PER_SELECTOR]:
            value = node.attributes.get(attribute) if attribute else node.text(strip=True)
            if value is not None and len(value) > MAX_VALUE_CHARS:
                value, self.truncated = value[:MAX_VALUE_CHARS], True
            self.size += len(value.encode()) if value else 0
            if self.size > MAX_VALUES_BYTES:
                self.truncated = True
                return
            found.append(value)

    @property
    def full(self) -> bool:
        return self.size > MAX_VALUES_BYTES


def extract(page: Fetched, selectors: dict[str, str], attribute: str | None
            ) -> tuple[str | None, Extracted]:
    tree = HTMLParser(page_text(page))
    title_node = tree.css_first("title")
    extracted = Extracted()
    for name, selector in selectors.items():
        if extracted.full:  # NOTE: every selector still has its (maybe empty) list
            extracted.values[name] = []
            continue
        extracted.add(name, tree.css(selector), attribute)
    return (title_node.text(strip=True) if title_node else None), extracted


@job_type("scrapeWebsite", payload=ScrapeWebsite, timeout_seconds=120)
async def scrape_website(payload: ScrapeWebsite, ctx: JobContext) -> dict[str, Any]:
    s = ctx.settings
    guard = OutboundGuard(s.scrape_allowed_hosts, "url")
    if s.scrape_respect_robots and not await allowed_by_robots(ctx, guard, payload.url):
        raise PermanentError(f"robots.txt disallows {payload.url} for {s.scrape_user_agent}")
    page = await fetch(ctx.http, guard, payload.url,
                       max_bytes=min(payload.max_bytes or s.scrape_max_bytes, s.scrape_max_bytes),
                       max_redirects=s.scrape_max_redirects,
                       timeout_seconds=s.scrape_timeout_seconds,
                       headers={"user-agent": s.scrape_user_agent})
    if page.status_code == 429 or page.status_code >= 500:
        raise Retry(f"the site answered {page.status_code}")
    if page.status_code >= 400:
        raise PermanentError(f"the site answered {page.status_code}")
    # NOTE: parsing a page of several MiB takes long enough to stall other jobs' I/O.
    title, extracted = await asyncio.to_thread(extract, page, payload.selectors,
                                               payload.attribute)
    return {"url": page.url, "status": page.status_code, "title": title,
            "values": extracted.values, "valuesTruncated": extracted.truncated,
            "bytes": len(page.body), "truncated": page.truncated}
