"""Hostile input at the submit side, against the real app with real MongoDB and Redis:
nothing a caller sends may hang other callers, store half a batch, or answer 500."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from typing import Any

import httpx
import pytest
from PIL import Image
from pydantic import BaseModel, field_validator

from services.api.submit import Submitter
from services.runtime import Stores
from services.worker.handlers.resize_image import ResizeImage, resize
from shared.errors import PermanentError, StoreUnavailable
from shared.jobtypes import JobContext, job_type
from shared.settings import Settings


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Bodies up to 4 MB, so the per-type limits (not the body limit) answer."""
    return settings.model_copy(update={"max_body_bytes": 4 * 1024 * 1024,
                                       "image_max_bytes": 3000})


class FreeForm(BaseModel):
    """A payload with a free-form part, as third-party job types often have."""

    data: Any = None


@job_type("freeformTest", payload=FreeForm)
async def freeform(payload: FreeForm, ctx: JobContext) -> None:
    return None


class Amplified(BaseModel):
    """A payload model that turns valid input into a value BSON cannot hold: only the
    group commit's own encoding can catch it."""

    n: int

    @field_validator("n")
    @classmethod
    def _huge(cls, n: int) -> int:
        return n * 2**70


@job_type("amplifiedTest", payload=Amplified)
async def amplified(payload: Amplified, ctx: JobContext) -> None:
    return None


def nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def freeform_body(data: str) -> str:
    return '{"jobType":"freeformTest","payload":{"data":' + data + "}}"


UNSTORABLE = {  # raw JSON bodies that old code let into the group commit, or 500'd on
    "int over int64": (freeform_body("[[1208925819614629174706176]]"), "payload.data.0.0",
                       "int_out_of_range"),
    "int under int64": (freeform_body("-9223372036854775809"), "payload.data",
                        "int_out_of_range"),
    "report row int": ('{"jobType":"generateReport","payload":{"format":"csv","title":"t",'
                       '"columns":["a"],"rows":[[1208925819614629174706176]]}}',
                       "payload.rows.0.0", "int_out_of_range"),
    "NUL in key": (freeform_body('{"a\\u0000b": 1}'), "payload.data.a\x00b", "key_nul"),
    "$ key": (freeform_body('{"$where": 1}'), "payload.data.$where", "key_dollar"),
    "DBRef-looking": (freeform_body('{"$ref": "jobs", "$id": 1}'), None, "key_dollar"),
    "NaN": (freeform_body("NaN"), "payload.data", "float_not_finite"),
    "Infinity in report": ('{"jobType":"generateReport","payload":{"format":"csv","title":"t",'
                           '"columns":["a"],"rows":[[Infinity]]}}', "payload.rows.0.0",
                           "float_not_finite"),
    "lone surrogate": (freeform_body('"\\ud800"'), "payload.data", "string_unicode"),
    "surrogate key": (freeform_body('{"\\udfff": 1}'), None, "string_unicode"),
    "payload 900 deep": (freeform_body(nested(900)), None, "too_deep"),
    "payload 33 deep": (freeform_body(nested(32)), None, "too_deep"),
    "runAt -23:59": ('{"jobType":"echo","payload":{"text":"a"},'
                     '"runAt":"2030-01-01T00:00:00-23:59"}', "runAt", "value_error"),
    "runAt year 1 +05:00": ('{"jobType":"echo","payload":{"text":"a"},'
                            '"runAt":"0001-01-01T00:00:00+05:00"}', "runAt", "value_error"),
    "runAt year 9999 -18:00": ('{"jobType":"echo","payload":{"text":"a"},'
                               '"runAt":"9999-12-31T23:00:00-18:00"}', "runAt", "value_error"),
}


async def post_raw(api: httpx.AsyncClient, body: str, path: str = "/jobs") -> httpx.Response:
    return await api.post(path, content=body.encode(),
                          headers={"content-type": "application/json"})


@pytest.mark.parametrize("case", list(UNSTORABLE))
async def test_unstorable_payload_is_422_naming_the_field(api: httpx.AsyncClient,
                                                          stores: Stores, case: str) -> None:
    body, field, kind = UNSTORABLE[case]
    r = await post_raw(api, body)
    assert r.status_code == 422, r.text
    details = r.json()["error"]["details"]
    assert kind in [d["type"] for d in details], details
    if field:
        assert field in [d["field"] for d in details], details
    assert await stores.jobs.count_documents({}) == 0


async def test_dotted_keys_and_31_levels_round_trip(api: httpx.AsyncClient) -> None:
    data = {"com.example.key": {"a.b": [1, 2**63 - 1, -(2**63)]}}
    r = await api.post("/jobs", json={"jobType": "freeformTest", "payload": {"data": data}})
    assert r.status_code == 202, r.text
    job = (await api.get(f"/jobs/{r.json()['jobId']}")).json()
    assert job["payload"] == {"data": data}
    r = await post_raw(api, freeform_body(nested(30)))  # payload 1 + data 30 + int
    assert r.status_code == 202, r.text


async def test_whole_body_3000_deep_is_400(api: httpx.AsyncClient, stores: Stores) -> None:
    r = await post_raw(api, freeform_body(nested(3000)))
    assert r.status_code == 400, r.text
    assert r.json()["error"]["message"]
    r = await post_raw(api, '{"jobs":[' + freeform_body(nested(3000)) + "]}", "/jobs/batch")
    assert r.status_code == 400, r.text
    assert await stores.jobs.count_documents({}) == 0


async def test_bad_submits_do_not_hold_up_valid_ones(api: httpx.AsyncClient,
                                                     stores: Stores) -> None:
    """100 valid submits racing the unstorable ones all get 202; each bad one a 4xx."""
    bad = [body for body, _, _ in UNSTORABLE.values()] * 2
    valid = [json.dumps({"jobType": "echo", "payload": {"text": str(i)}}) for i in range(100)]
    bodies = [*valid, *bad]
    answers = await asyncio.wait_for(
        asyncio.gather(*(post_raw(api, b) for b in bodies)), 60)
    assert [r.status_code for r in answers[:100]] == [202] * 100
    assert {r.status_code for r in answers[100:]} == {422}
    assert await stores.jobs.count_documents({}) == 100


async def test_an_unencodable_document_is_refused_alone(api: httpx.AsyncClient,
                                                        stores: Stores) -> None:
    bodies = [{"jobType": "echo", "payload": {"text": str(i)}} for i in range(50)]
    bodies[25] = {"jobType": "amplifiedTest", "payload": {"n": 3}}
    answers = await asyncio.wait_for(
        asyncio.gather(*(api.post("/jobs", json=b) for b in bodies)), 60)
    codes = [r.status_code for r in answers]
    assert codes == [202] * 25 + [422] + [202] * 24
    assert answers[25].json()["error"]["code"] == "unstorable"
    assert await stores.jobs.count_documents({}) == 49


class BrokenFlusher(Submitter):
    """A flusher with a bug: it dies on the first batch."""

    async def _flush(self, batch: Any) -> None:
        raise RuntimeError("a bug in the flusher")


async def test_a_dying_flusher_answers_every_waiter(settings: Settings,
                                                    stores: Stores) -> None:
    deaths: list[str] = []
    submitter = BrokenFlusher(settings, stores.jobs, stores.queue, stores.clock, {},
                              on_fatal=lambda: deaths.append("died"))
    fields = [{"_id": f"job_broken{i}", "job_type": "echo", "payload": {}, "run_at": None}
              for i in range(20)]
    answers = await asyncio.wait_for(asyncio.gather(
        *(submitter.submit(f) for f in fields), return_exceptions=True), 30)
    assert all(isinstance(a, StoreUnavailable) for a in answers), answers
    assert deaths == ["died"]
    await submitter.close()


# -- cursors ------------------------------------------------------------------------------

@pytest.mark.parametrize("raw", [
    '[1e20, "a"]', '[-1e20, "a"]', '[Infinity, "a"]', '[-Infinity, "a"]', '[NaN, "a"]',
    '{"ts": 1, "id": "a"}', '"job_x"', "5", "null", "[]", "[1]", '[1, "a", 3]',
    '["1", "a"]', '[true, "a"]', '[1, {"$gt": ""}]', '[1, ["a"]]', '[1, null]',
    "[" * 5000 + "]" * 5000, "not json", '[1, "' + "a" * 500 + '"]',
])
async def test_crafted_cursor_is_422_invalid_cursor(api: httpx.AsyncClient, raw: str) -> None:
    cursor = base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")
    r = await api.get("/jobs", params={"cursor": cursor[:512]})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_cursor"


async def test_cursor_that_is_not_base64_is_422(api: httpx.AsyncClient) -> None:
    for cursor in ("%%%", "a", "\u00e9\u00e9\u00e9\u00e9"):
        r = await api.get("/jobs", params={"cursor": cursor})
        assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid_cursor")


# -- batches -------------------------------------------------------------------------------

def echo(text: str, key: str | None = None) -> dict[str, Any]:
    return {"jobType": "echo", "payload": {"text": text},
            **({"idempotencyKey": key} if key else {})}


async def test_batch_with_a_key_twice_for_different_bodies_stores_nothing(
        api: httpx.AsyncClient, stores: Stores) -> None:
    batch = [echo("a"), echo("b", "k1"), echo("c"), echo("d", "k1")]
    r = await api.post("/jobs/batch", json={"jobs": batch})
    assert r.status_code == 409, r.text
    error = r.json()["error"]
    assert error["code"] == "idempotency_conflict" and error["details"]["jobs"] == [1, 3]
    assert await stores.jobs.count_documents({}) == 0


async def test_batch_conflicting_with_a_stored_key_stores_nothing(
        api: httpx.AsyncClient, stores: Stores) -> None:
    assert (await api.post("/jobs", json=echo("first", "k2"))).status_code == 202
    batch = [echo("a"), echo("b"), echo("other", "k2"), echo("c")]
    r = await api.post("/jobs/batch", json={"jobs": batch})
    assert r.status_code == 409, r.text
    assert r.json()["error"]["code"] == "idempotency_conflict"
    assert await stores.jobs.count_documents({}) == 1


async def test_batch_repeats_of_one_request_are_one_job(api: httpx.AsyncClient,
                                                        stores: Stores) -> None:
    earlier = (await api.post("/jobs", json=echo("old", "k3"))).json()["jobId"]
    batch = [echo("a", "k4"), echo("b"), echo("a", "k4"), echo("old", "k3")]
    r = await api.post("/jobs/batch", json={"jobs": batch})
    assert r.status_code == 202, r.text
    ids = [j["jobId"] for j in r.json()["jobs"]]
    assert ids[0] == ids[2] and ids[3] == earlier and len(set(ids)) == 3
    assert await stores.jobs.count_documents({}) == 3


# -- bounds on every field -----------------------------------------------------------------

@pytest.mark.parametrize(("extra", "field"), [
    ({"callbackEvents": ["job.completed"] * 60_000}, "callbackEvents"),
    ({"callbackEvents": ["job.completed", "job.completed"]}, "callbackEvents"),
    ({"callbackEvents": ["job.exploded"]}, "callbackEvents.0"),
    ({"callbackEvents": [7]}, "callbackEvents.0"),
    ({"idempotencyKey": "k" * 256}, "idempotencyKey"),
    ({"idempotencyKey": "a\nb"}, "idempotencyKey"),
    ({"jobType": "x" * 101}, "jobType"),
    ({"callbackUrl": "http://127.0.0.1/" + "a" * 2048}, "callbackUrl"),
    ({"timeoutSeconds": 1e308}, "timeoutSeconds"),
    ({"delaySeconds": -1}, "delaySeconds"),
])
async def test_every_field_is_bounded(api: httpx.AsyncClient, stores: Stores,
                                      extra: dict[str, Any], field: str) -> None:
    r = await api.post("/jobs", json={**echo("a"), **extra})
    assert r.status_code == 422, r.text[:500]
    assert field in [d["field"] for d in r.json()["error"]["details"]]
    assert await stores.jobs.count_documents({}) == 0


async def test_idempotency_key_header_is_bounded(api: httpx.AsyncClient,
                                                 stores: Stores) -> None:
    r = await api.post("/jobs", json=echo("a"), headers={"Idempotency-Key": "k" * 256})
    assert r.status_code == 422
    assert r.json()["error"]["details"][0]["field"] == "header.Idempotency-Key"
    assert await stores.jobs.count_documents({}) == 0


# -- what one payload may ask for -----------------------------------------------------------

PNG_1PX = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmM"
           "IQAAAABJRU5ErkJggg==")
MANY = [f"user{i}@example.com" for i in range(101)]


@pytest.mark.parametrize(("job_type", "payload", "field", "why"), [
    ("resizeImage", {"imageBase64": PNG_1PX, "width": 10_000, "height": 10_000},
     "payload", "pixels"),
    ("resizeImage", {"imageBase64": "QUJD" * 1001, "width": 10}, "payload.imageBase64",
     "over 3000 bytes"),
    ("sendEmail", {"to": MANY[:50], "cc": MANY[50:80], "bcc": MANY[80:], "subject": "s",
                   "body": "b"}, "payload", "recipients"),
    ("sendEmail", {"to": "a@example.com", "subject": "s", "body": "b" * 700_000,
                   "html": "h" * 400_000}, "payload", "bytes"),
    ("sendNotification", {"channel": "push", "to": "t", "message": "m",
                          "data": {f"k{i}": "v" * 100 for i in range(50)}},
     "payload.data", "4096 bytes"),
    ("scrapeWebsite", {"url": "http://127.0.0.1/", "selectors": {"x": "a" * 1001}},
     "payload.selectors.x", "1000"),
    ("scrapeWebsite", {"url": "http://127.0.0.1/", "selectors": {"x" * 101: "a"}},
     None, "100"),
])
async def test_payload_asking_too_much_is_422(api: httpx.AsyncClient, stores: Stores,
                                              job_type: str, payload: dict[str, Any],
                                              field: str | None, why: str) -> None:
    r = await api.post("/jobs", json={"jobType": job_type, "payload": payload})
    assert r.status_code == 422, r.text[:300]
    details = r.json()["error"]["details"]
    assert any(why in d["message"] for d in details), details
    if field:
        assert field in [d["field"] for d in details], details
    assert await stores.jobs.count_documents({}) == 0


async def test_concurrent_repeats_of_a_key_are_one_job(api: httpx.AsyncClient,
                                                       stores: Stores) -> None:
    """Racing submits with one key land in one group commit: the duplicates are
    answered with the stored job (200), or 409 when their body differs."""
    same = [api.post("/jobs", json=echo("same", "k5")) for _ in range(20)]
    other = [api.post("/jobs", json=echo("other", "k5"))]
    answers = await asyncio.wait_for(asyncio.gather(*same, *other), 60)
    codes = sorted(r.status_code for r in answers[:20])
    if answers[20].status_code == 202:  # the different body won the race
        assert codes == [409] * 20
    else:
        ids = {r.json()["jobId"] for r in answers[:20]}
        assert codes == [200] * 19 + [202] and len(ids) == 1
        assert answers[20].status_code == 409
    assert await stores.jobs.count_documents({}) == 1


def test_one_side_scaled_past_the_output_limit_is_refused_before_resizing() -> None:
    """A 1x100 image with width 10,000 would be 10,000 x 1,000,000 pixels."""
    tall = io.BytesIO()
    Image.new("L", (1, 100)).save(tall, format="PNG")
    job = ResizeImage(image_base64=base64.b64encode(tall.getvalue()).decode(), width=10_000)
    with pytest.raises(PermanentError, match="over the 25000000 limit"):
        resize(tall.getvalue(), job, max_pixels=40_000_000)


async def test_list_filters_are_bounded(api: httpx.AsyncClient) -> None:
    for params in ({"jobType": "x" * 101}, {"cursor": "a" * 513}, {"limit": 501},
                   {"limit": 0}, {"status": "DONE"}):
        r = await api.get("/jobs", params=params)
        assert r.status_code == 422, (params, r.text[:200])


@pytest.mark.parametrize("key", ["zz\tb", "zz\x01b"])
async def test_idempotency_key_header_refuses_control_characters(
        api: httpx.AsyncClient, stores: Stores, key: str) -> None:
    r = await api.post("/jobs", json={"jobType": "echo", "payload": {"text": "x"}},
                       headers={"Idempotency-Key": key})
    assert r.status_code == 422, r.text
    assert await stores.jobs.count_documents({}) == 0


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("PUT", "/jobs", "GET, POST"), ("PATCH", "/healthz", "GET"),
    ("GET", "/submit-job", "POST"), ("GET", "/jobs/job_x/cancel", "POST")])
async def test_405_names_the_methods_the_path_serves(api: httpx.AsyncClient, method: str,
                                                     path: str, allow: str) -> None:
    r = await api.request(method, path)
    assert r.status_code == 405 and r.headers["allow"] == allow
    assert r.json()["error"]["code"] == "method_not_allowed"


async def test_large_submits_beside_small_ones_are_all_stored_and_answered(
        api: httpx.AsyncClient, stores: Stores) -> None:
    """Many large documents arriving together: inserted in chunks, each within the
    per-operation budget, so no submit is told 503 for a job that was in fact stored."""
    rows = [[i, i + 1] for i in range(30_000)]  # many small BSON values: slow to store
    big = {"jobType": "generateReport",
           "payload": {"format": "csv", "title": "t", "columns": ["a", "b"], "rows": rows}}
    small = {"jobType": "echo", "payload": {"text": "y"}}
    replies = await asyncio.gather(*(api.post("/jobs", json=body)
                                     for body in [big] * 30 + [small] * 50))
    assert [r.status_code for r in replies] == [202] * 80, {r.text[:200] for r in replies}
    assert await stores.jobs.count_documents({}) == 80
