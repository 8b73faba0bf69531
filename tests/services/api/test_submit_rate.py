"""The submit rate per API key: 429 ``rate_limited`` with Retry-After, a batch counts
as its size, and one budget across several real API processes on the same Redis."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.runtime import Stores
from shared.settings import Settings
from tests.support import Service, bearer, spawn

ECHO = {"jobType": "echo", "payload": {"text": "hi"}}


def batch(size: int) -> dict[str, Any]:
    return {"jobs": [ECHO] * size}


async def test_over_the_rate_is_429_with_retry_after(api: httpx.AsyncClient,
                                                     make_key: Any) -> None:
    headers = await make_key("acme", submit_rate="3/h")
    other = await make_key("acme", submit_rate="3/h")
    for _ in range(3):
        assert (await api.post("/jobs", json=ECHO, headers=headers)).status_code == 202
    r = await api.post("/submit-job", json=ECHO, headers=headers)
    assert r.status_code == 429
    error = r.json()["error"]
    assert error["code"] == "rate_limited"
    assert error["details"]["limit"] == "3/3600s" and error["details"]["jobs"] == 1
    assert 1100 <= int(r.headers["Retry-After"]) <= 1200  # one job's share of the hour
    # reads are not limited; another key has its own budget
    assert (await api.get("/jobs", headers=headers)).status_code == 200
    assert (await api.post("/jobs", json=ECHO, headers=other)).status_code == 202


async def test_a_batch_counts_as_its_size(api: httpx.AsyncClient, make_key: Any,
                                          stores: Stores) -> None:
    headers = await make_key("acme", submit_rate="10/h")
    assert (await api.post("/jobs/batch", json=batch(4), headers=headers)).status_code == 202
    r = await api.post("/jobs/batch", json=batch(7), headers=headers)
    assert r.status_code == 429 and r.json()["error"]["details"]["jobs"] == 7
    assert (await api.post("/jobs/batch", json=batch(6), headers=headers)).status_code == 202
    assert (await api.post("/jobs", json=ECHO, headers=headers)).status_code == 429
    assert await stores.jobs.count_documents({}) == 10  # a refused batch stores nothing


async def test_the_default_rate_applies_to_every_key(settings: Settings, make_key: Any,
                                                     stores: Stores) -> None:
    from services.api.app import create_app

    app = create_app(settings.model_copy(update={"submit_rate_limit": "2/h"}))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as api:
            limited = await make_key("acme")
            own = await make_key("acme", submit_rate="5/h")
            codes = [(await api.post("/jobs", json=ECHO, headers=limited)).status_code
                     for _ in range(3)]
            assert codes == [202, 202, 429]
            codes = [(await api.post("/jobs", json=ECHO, headers=own)).status_code
                     for _ in range(6)]
            assert codes == [202] * 5 + [429]


@pytest.fixture
def two_apis(settings: Settings, tmp_path: Path) -> Iterator[list[Service]]:
    apis: list[Service] = []
    try:
        for _ in range(2):
            apis.append(spawn("api", settings, tmp_path / "out"))
        yield apis
    finally:
        for service in apis:
            service.stop()


async def test_one_budget_across_api_processes(two_apis: list[Service], stores: Stores,
                                               settings: Settings) -> None:
    headers = await bearer(stores.mongo[settings.mongodb_database], "acme",
                           submit_rate="12/h")
    clients = [httpx.AsyncClient(base_url=s.url or "", headers=headers, timeout=30)
               for s in two_apis]
    try:
        codes: Counter[int] = Counter()
        per_process: Counter[int] = Counter()
        for i, client in zip(range(30), itertools.cycle(range(2)), strict=False):
            body = batch(2) if i % 3 == 0 else ECHO
            r = await clients[client].post("/jobs/batch" if "jobs" in body else "/jobs",
                                           json=body)
            assert r.status_code in (200, 202, 429), r.text
            jobs = len(body["jobs"]) if "jobs" in body else 1
            if r.status_code == 202:
                codes[202] += jobs
                per_process[client] += jobs
            else:
                codes[r.status_code] += 1
                assert r.json()["error"]["code"] == "rate_limited"
                assert int(r.headers["Retry-After"]) > 0
    finally:
        for client in clients:
            await client.aclose()
    assert codes[202] == 12  # the whole budget, and not a job more
    assert per_process[0] and per_process[1]  # both processes took from it
    assert await stores.jobs.count_documents({}) == 12


async def test_a_malformed_request_costs_nothing_a_checked_one_counts(
        api: httpx.AsyncClient, make_key: Any, stores: Stores) -> None:
    """A body of the wrong shape is refused before the rate; one of the right shape is
    counted before its jobs are checked (payloads, callback hosts), so a key over its
    rate gets a 429 at once, never that work."""
    headers = await make_key("acme", submit_rate="3/h")
    for body, path in (({"jobType": 1}, "/jobs"), ({"jobs": "no"}, "/jobs/batch"),
                       ({"jobs": [ECHO, {"payload": {}}]}, "/jobs/batch")):
        r = await api.post(path, json=body, headers=headers)
        assert r.status_code == 422, r.text
    assert (await api.post("/jobs/batch", json=batch(2), headers=headers)).status_code == 202
    bad = {"jobType": "echo", "payload": {"wrong": 1}}
    r = await api.post("/jobs", json=bad, headers=headers)
    assert r.status_code == 422, r.text  # counted: the budget is used up now
    hosts = {"jobs": [{**ECHO, "callbackUrl": f"http://h{i}.example.invalid/x"}
                      for i in range(3)]}
    for body, path in ((bad, "/jobs"), (hosts, "/jobs/batch"), (ECHO, "/jobs")):
        r = await api.post(path, json=body, headers=headers)
        assert r.status_code == 429, r.text
        assert r.json()["error"]["code"] == "rate_limited"
    assert await stores.jobs.count_documents({}) == 2
