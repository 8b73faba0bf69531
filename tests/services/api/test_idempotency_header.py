"""An ``Idempotency-Key`` header sent twice, or beside a different idempotencyKey in
the body, is refused, naming the header; nothing is stored (the API could only guess
which key the client meant)."""

from __future__ import annotations

import httpx

from services.runtime import Stores

ECHO = {"jobType": "echo", "payload": {"text": "hi"}}


async def test_two_idempotency_key_headers_are_refused(api: httpx.AsyncClient,
                                                       stores: Stores) -> None:
    r = await api.post("/jobs", json=ECHO,
                       headers=[("Idempotency-Key", "a"), ("Idempotency-Key", "b")])
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "duplicate_header"
    assert error["details"] == {"header": "Idempotency-Key"}
    assert await stores.jobs.count_documents({}) == 0
    # one header is still honoured
    first = await api.post("/jobs", json=ECHO, headers={"Idempotency-Key": "a"})
    again = await api.post("/jobs", json=ECHO, headers={"Idempotency-Key": "a"})
    assert (first.status_code, again.status_code) == (202, 200)
    assert first.json()["jobId"] == again.json()["jobId"]


async def test_a_header_and_a_body_key_that_differ_are_refused(api: httpx.AsyncClient,
                                                               stores: Stores) -> None:
    r = await api.post("/jobs", json={**ECHO, "idempotencyKey": "b1"},
                       headers={"Idempotency-Key": "h1"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "conflicting_idempotency_keys"
    assert await stores.jobs.count_documents({}) == 0
    same = await api.post("/jobs", json={**ECHO, "idempotencyKey": "k"},
                          headers={"Idempotency-Key": "k"})
    assert same.status_code == 202, same.text
