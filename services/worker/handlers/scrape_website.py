"""``scrapeWebsite``: fetch a page (httpx) and extract values by CSS selector (selectolax).

The URL goes through the outbound guard at submit and again on every hop at fetch time
(``JOBQUEUE_SCRAPE_ALLOWED_HOSTS`` names exceptions); robots.txt is respected unless
``JOBQUEUE_SCRAPE_RESPECT_ROBOTS=false``; redirects, time and size are bounded.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any
from urllib.robotparser import RobotFileParser

import httpx
from pydantic import Field, ValidationInfo, field_validator
from selectolax.lexbor import LexborHTMLParser as HTMLParser

from services.worker.handlers.common import Payload, checked_url
from shared.errors import Retry
from shared.jobtypes import JobContext, PermanentError, job_type
from shared.outbound import Fetched, OutboundGuard, fetch

ROBOTS_MAX_BYTES = 512 * 1024


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


def extract(page: Fetched, selectors: dict[str, str], attribute: str | None
            ) -> tuple[str | None, dict[str, list[str | None]]]:
    charset = page.headers.get_list("content-type")
    encoding = "utf-8"
    for part in ";".join(charset).split(";"):
        if part.strip().lower().startswith("charset="):
            encoding = part.split("=", 1)[1].strip() or encoding
    tree = HTMLParser(page.body.decode(encoding, "replace"))
    title_node = tree.css_first("title")
    values = {name: [node.attributes.get(attribute) if attribute else node.text(strip=True)
                     for node in tree.css(selector)]
              for name, selector in selectors.items()}
    return (title_node.text(strip=True) if title_node else None), values


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
    title, values = await asyncio.to_thread(extract, page, payload.selectors,
                                            payload.attribute)
    return {"url": page.url, "status": page.status_code, "title": title, "values": values,
            "bytes": len(page.body), "truncated": page.truncated}
