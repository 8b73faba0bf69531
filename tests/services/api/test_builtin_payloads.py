"""Every built-in job type rejects a bad payload at submit: 422, the field named,
nothing stored."""

from typing import Any

import httpx
import pytest

from services.runtime import Stores

CASES = [
    ("sendEmail", {"to": "not-an-address", "subject": "s", "body": "b"}, "payload.to.0"),
    ("sendEmail", {"to": [], "subject": "s", "body": "b"}, "payload.to"),
    ("sendEmail", {"to": "a@example.com", "body": "b"}, "payload.subject"),
    ("sendEmail", {"to": "a@example.com", "subject": "s", "body": "b", "cc": ["x"]},
     "payload.cc.0"),
    ("resizeImage", {"imageBase64": "!!notbase64!!", "width": 10}, "payload.imageBase64"),
    ("resizeImage", {"imageBase64": "aGk=", "width": 0}, "payload.width"),
    ("resizeImage", {"imageBase64": "aGk=", "width": 10, "mode": "stretch"}, "payload.mode"),
    ("resizeImage", {"imageUrl": "http://169.254.169.254/x.png", "width": 10},
     "payload.imageUrl"),
    ("resizeImage", {"width": 10}, "payload"),
    ("generateReport", {"format": "doc", "title": "t", "columns": ["a"], "rows": []},
     "payload.format"),
    ("generateReport", {"format": "csv", "title": "t", "columns": ["a", "b"],
                        "rows": [[1, 2], [3]]}, "payload.rows"),
    ("generateReport", {"format": "csv", "title": "", "columns": ["a"]}, "payload.title"),
    ("sendNotification", {"channel": "sms", "to": "12345", "message": "m"}, "payload.to"),
    ("sendNotification", {"channel": "fax", "to": "x", "message": "m"}, "payload.channel"),
    ("sendNotification", {"channel": "push", "to": "t"}, "payload.message"),
    ("scrapeWebsite", {"url": "ftp://example.com/"}, "payload.url"),
    ("scrapeWebsite", {"url": "http://example.com/", "selectors": {"x": "a[[["}},
     "payload.selectors"),
    ("scrapeWebsite", {"url": "http://example.com/", "maxBytes": -1}, "payload.maxBytes"),
    ("echo", {"text": 3}, "payload.text"),
]


@pytest.mark.parametrize(("job_type", "payload", "field"), CASES)
async def test_bad_payload_is_422_with_the_field(api: httpx.AsyncClient, stores: Stores,
                                                 job_type: str, payload: dict[str, Any],
                                                 field: str) -> None:
    r = await api.post("/jobs", json={"jobType": job_type, "payload": payload})
    assert r.status_code == 422, r.text
    fields = [d["field"] for d in r.json()["error"]["details"]]
    assert field in fields, fields
    assert await stores.jobs.count_documents({}) == 0
