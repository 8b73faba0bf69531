"""scrapeWebsite against a local site: selectors, robots.txt, and the outbound guard."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from shared.settings import Settings
from tests.receiver import Receiver, Slow, receiver

PAGE = b"""<html><head><title> Price list </title></head><body>
<ul><li class="item"><a href="/a">Apples</a></li><li class="item"><a href="/b">Pears</a></li></ul>
<p id="total">Total: 2</p></body></html>"""
HTML = {"content-type": "text/html; charset=utf-8"}


@pytest.fixture
def site() -> Iterator[Receiver]:
    with receiver() as r:
        r.on("/robots.txt", (200, {}, b"User-agent: *\nDisallow: /private\n"))
        r.on("/prices", (200, HTML, PAGE))
        r.on("/private/prices", (200, HTML, PAGE))
        r.on("/to-metadata", (302, {"location": "http://169.254.169.254/latest/"}, b""))
        yield r


async def test_selectors_extract_text_and_attributes(site: Receiver, run_job: Any) -> None:
    doc = await run_job("scrapeWebsite", {"url": site.url + "/prices", "selectors": {
        "items": "li.item a", "total": "#total", "missing": ".nothing"}})
    assert doc["status"] == "COMPLETED", doc.get("error")
    result = doc["result"]
    assert result["status"] == 200 and result["title"] == "Price list"
    assert result["values"] == {"items": ["Apples", "Pears"], "total": ["Total: 2"],
                                "missing": []}
    doc = await run_job("scrapeWebsite", {"url": site.url + "/prices",
                                          "selectors": {"links": "li.item a"},
                                          "attribute": "href", "maxBytes": 100})
    assert doc["result"]["truncated"] and doc["result"]["bytes"] == 100


async def test_robots_disallow_is_respected(site: Receiver, run_job: Any) -> None:
    doc = await run_job("scrapeWebsite", {"url": site.url + "/private/prices"})
    assert doc["status"] == "FAILED" and "robots.txt" in doc["error"]["message"]
    assert site.at("/private/prices") == []


async def test_internal_targets_are_refused(api: httpx.AsyncClient, site: Receiver,
                                            run_job: Any) -> None:
    for url in ("http://169.254.169.254/latest/", "http://0xA9FEA9FE/", "http://10.0.0.1/"):
        r = await api.post("/jobs", json={"jobType": "scrapeWebsite", "payload": {"url": url}})
        assert r.status_code == 422, r.text
        assert r.json()["error"]["details"][0]["field"] == "payload.url"
    doc = await run_job("scrapeWebsite", {"url": site.url + "/to-metadata"})
    assert doc["status"] == "FAILED" and doc["attempt"] == 1
    assert "169.254.169.254" in doc["error"]["message"]


@pytest.fixture
def quick_fetch(settings: Settings) -> Settings:
    """A 2 s fetch deadline (set before the worker starts)."""
    settings.scrape_timeout_seconds = 2
    return settings


async def test_a_dripping_site_fails_at_the_fetch_deadline(site: Receiver, quick_fetch: Settings,
                                                           run_job: Any) -> None:
    """One byte a second never trips a per-read timeout; the whole fetch has one."""
    site.on("/drip", Slow(200, (b"x" for _ in range(30)), headers=HTML, pause=1.0))
    doc = await run_job("scrapeWebsite", {"url": site.url + "/drip"}, timeout=60,
                        timeoutSeconds=60, maxRetries=0)
    assert doc["status"] == "FAILED"
    assert "took longer than 2s" in doc["error"]["message"], doc["error"]


@pytest.mark.parametrize("charset", ["rot13", "base64", "nosuch", "idna", '"utf-8"'])
async def test_an_unusable_charset_falls_back_to_utf8(site: Receiver, run_job: Any,
                                                      charset: str) -> None:
    site.on("/odd", (200, {"content-type": f"text/html; charset={charset}"},
                     "<title>Caf\u00e9</title><p id='x'>na\u00efve</p>".encode()))
    doc = await run_job("scrapeWebsite", {"url": site.url + "/odd",
                                          "selectors": {"x": "#x"}})
    assert doc["status"] == "COMPLETED", doc.get("error")
    assert doc["result"]["title"] == "Caf\u00e9"
    assert doc["result"]["values"] == {"x": ["na\u00efve"]}


async def test_extraction_is_bounded(site: Receiver, run_job: Any) -> None:
    """1,500 matches keep 1,000; 3,000-character values keep 2,000; past 512 KiB of
    values extraction stops; the result says so."""
    page = ("<html><body>" + "<i>x</i>" * 1_500 + ("<p>" + "y" * 3_000 + "</p>") * 300
            + "<b>late</b></body></html>")
    site.on("/big", (200, HTML, page.encode()))
    doc = await run_job("scrapeWebsite", {"url": site.url + "/big", "selectors": {
        "many": "i", "long": "p", "after": "b"}})
    assert doc["status"] == "COMPLETED", doc.get("error")
    result = doc["result"]
    assert result["valuesTruncated"] is True and result["truncated"] is False
    values = result["values"]
    assert values["many"] == ["x"] * 1_000
    assert 0 < len(values["long"]) < 300
    assert all(v == "y" * 2_000 for v in values["long"])
    assert values["after"] == []
    assert sum(len(v) for v in [*values["many"], *values["long"]]) <= 512 * 1024
    doc = await run_job("scrapeWebsite", {"url": site.url + "/prices",
                                          "selectors": {"items": "li.item a"}})
    assert doc["result"]["valuesTruncated"] is False
