"""API keys over the in-process API (real MongoDB and Redis): 401 without a valid key,
403 without the scope, protected mode for clients not on this machine, and the opt-out."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from services.api.app import create_app
from services.api.auth import KeyRing
from services.runtime import Stores
from shared.apikeys import api_keys, create_key, hash_key, list_keys, revoke_key
from shared.settings import Settings
from shared.tenants import tenants_collection
from tests.conftest import Servers
from tests.support import isolated_settings, wait_until

ECHO = {"jobType": "echo", "payload": {"text": "hi"}}
CACHE_SECONDS = 0.3


@pytest.fixture
def settings(servers: Servers, tmp_path: Path) -> Settings:
    # NOTE: a short cache, so that revokes and the end of protected mode show quickly.
    return isolated_settings(servers.redis_url, servers.mongodb_url, tmp_path / "logs",
                             api_key_cache_seconds=CACHE_SECONDS)


@pytest.fixture
async def remote_api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The same app, called from an address that is not this machine's."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield client


def error(r: httpx.Response) -> tuple[int, str]:
    return r.status_code, r.json()["error"]["code"]


async def test_no_key_made_loopback_may_do_everything(api: httpx.AsyncClient) -> None:
    r = await api.post("/jobs", json=ECHO)
    assert r.status_code == 202
    assert (await api.get(f"/jobs/{r.json()['jobId']}")).json()["tenant"] == "default"


async def test_protected_mode_refuses_other_hosts_until_a_key_exists(
        remote_api: httpx.AsyncClient, make_key: Any) -> None:
    r = await remote_api.get("/jobs")
    assert error(r) == (403, "protected_mode")
    assert "jobqueue keys create" in r.json()["error"]["message"]
    assert "JOBQUEUE_AUTH=disabled" in r.json()["error"]["message"]
    assert error(await remote_api.post("/jobs", json=ECHO)) == (403, "protected_mode")
    assert error(await remote_api.get("/docs")) == (403, "protected_mode")
    assert (await remote_api.get("/healthz")).status_code == 200
    assert (await remote_api.get("/readyz")).status_code == 200

    headers = await make_key("acme")
    assert (await remote_api.post("/jobs", json=ECHO, headers=headers)).status_code == 202
    assert error(await remote_api.get("/jobs")) == (401, "unauthorized")


async def test_once_a_key_exists_every_request_needs_one(api: httpx.AsyncClient,
                                                         make_key: Any) -> None:
    headers = await make_key("acme")

    async def refused() -> bool:
        return (await api.get("/jobs")).status_code == 401

    await wait_until(refused, 10, "protected mode to end")  # within the cache period
    for method, path in [("GET", "/jobs"), ("POST", "/jobs"), ("GET", "/job-status/job_x"),
                         ("GET", "/jobs/job_x/events"), ("DELETE", "/jobs/job_x"),
                         ("GET", "/openapi.json")]:
        r = await api.request(method, path)
        assert error(r) == (401, "unauthorized"), (method, path)
        assert r.headers["WWW-Authenticate"] == "Bearer"
    assert (await api.get("/healthz")).status_code == 200
    assert (await api.get("/readyz")).status_code == 200
    assert (await api.get("/jobs", headers=headers)).status_code == 200


@pytest.mark.parametrize("authorization", [
    "Bearer jq_" + "A" * 43, "Bearer nonsense", "Basic dXNlcjpwYXNz", "Bearer", "jq_abc"])
async def test_an_unknown_key_is_401(api: httpx.AsyncClient, make_key: Any,
                                     authorization: str) -> None:
    await make_key("acme")
    r = await api.get("/jobs", headers={"Authorization": authorization})
    assert error(r) == (401, "unauthorized")


async def test_a_revoked_key_is_refused_within_the_cache_period(
        api: httpx.AsyncClient, stores: Stores, settings: Settings) -> None:
    db = stores.mongo[settings.mongodb_database]
    info, key = await create_key(db, "acme")
    headers = {"Authorization": f"Bearer {key}"}
    assert (await api.get("/jobs", headers=headers)).status_code == 200
    assert (await revoke_key(db, info.key_id)) is not None

    async def refused() -> bool:
        return (await api.get("/jobs", headers=headers)).status_code == 401

    await wait_until(refused, 10, "the revoked key to be refused")
    r = await api.post("/jobs", json=ECHO, headers=headers)
    assert error(r) == (401, "unauthorized")
    assert r.json()["error"]["message"] == "unknown or revoked API key"


async def test_scopes(api: httpx.AsyncClient, make_key: Any) -> None:
    reader = await make_key("acme", "read")
    writer = await make_key("acme", "submit")
    job_id = (await api.post("/jobs", json=ECHO, headers=writer)).json()["jobId"]

    # submit also reads, read only reads
    for headers in (reader, writer):
        assert (await api.get(f"/jobs/{job_id}", headers=headers)).status_code == 200
        assert (await api.get("/jobs", headers=headers)).status_code == 200
    for method, path, body in [
            ("POST", "/jobs", ECHO), ("POST", "/submit-job", ECHO),
            ("POST", "/jobs/batch", {"jobs": [ECHO]}), ("POST", f"/jobs/{job_id}/cancel", None),
            ("POST", f"/jobs/{job_id}/retry", None), ("DELETE", f"/jobs/{job_id}", None),
            ("POST", f"/jobs/{job_id}/deliveries/evt_x/redeliver", None)]:
        r = await api.request(method, path, json=body, headers=reader)
        assert error(r) == (403, "forbidden"), (method, path)
        assert r.json()["error"]["details"] == {"required": "submit", "scopes": ["read"]}
    assert (await api.get(f"/job-status/{job_id}", headers=reader)).json()["status"] == "QUEUED"
    r = await api.post(f"/jobs/{job_id}/cancel", headers=writer)
    assert r.json()["status"] == "CANCELLED"


async def test_auth_disabled_lets_everyone_in(settings: Settings, make_key: Any) -> None:
    await make_key("acme")
    app = create_app(settings.model_copy(update={"auth": "disabled"}))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            r = await client.post("/jobs", json=ECHO)
            assert r.status_code == 202
            doc = (await client.get(f"/jobs/{r.json()['jobId']}")).json()
            assert doc["tenant"] == "default"


async def test_only_a_hash_is_stored(stores: Stores, settings: Settings) -> None:
    db = stores.mongo[settings.mongodb_database]
    info, key = await create_key(db, "acme", submit_rate="5/s")
    assert key.startswith("jq_") and len(key) == 46
    stored = await api_keys(db).find_one({"_id": info.key_id})
    assert stored is not None
    assert key not in str(stored)
    assert stored["key_hash"] == hash_key(key) and stored["prefix"] == key[:10]
    assert stored["tenant"] == "acme" and stored["scopes"] == ["submit"]
    assert stored["submit_rate"] == "5/1s"
    assert [k.key_id for k in await list_keys(db)] == [info.key_id]
    # the tenant is stored with its first key (its webhook signing secret)
    assert await tenants_collection(db).find_one({"_id": "acme"}) is not None
    index = await api_keys(db).index_information()
    assert index["key_hash_unique"]["unique"]


@pytest.mark.parametrize(("tenant", "scopes", "rate"), [
    ("Acme", ("submit",), None), ("acme", ("write",), None), ("acme", ("read",), "fast")])
async def test_bad_key_requests_are_refused(stores: Stores, settings: Settings, tenant: str,
                                            scopes: tuple[Any, ...], rate: str | None) -> None:
    with pytest.raises(ValueError):
        await create_key(stores.mongo[settings.mongodb_database], tenant, scopes, rate)


async def test_the_keyring_trusts_what_it_read_for_its_period(stores: Stores,
                                                              settings: Settings) -> None:
    db = stores.mongo[settings.mongodb_database]
    now = [1000.0]
    ring = KeyRing(api_keys(db), ttl=60, clock=lambda: now[0])
    assert not await ring.any_key_made()
    info, key = await create_key(db, "acme")
    assert not await ring.any_key_made()  # read less than a period ago
    now[0] += 60
    assert await ring.any_key_made()

    found = await ring.find(key)
    assert found is not None and found.revoked_at is None
    await revoke_key(db, info.key_id)
    cached = await ring.find(key)
    assert cached is not None and cached.revoked_at is None  # still within the period
    now[0] += 60
    revoked = await ring.find(key)
    assert revoked is not None and revoked.revoked_at is not None
    assert await ring.find("jq_unknown") is None

    await api_keys(db).delete_many({})
    assert await ring.any_key_made()  # keys are never deleted: once made, always needed


async def test_a_flood_of_unknown_keys_never_evicts_a_known_one(stores: Stores,
                                                                 settings: Settings) -> None:
    db = stores.mongo[settings.mongodb_database]
    ring = KeyRing(api_keys(db), ttl=600, max_known=5, max_unknown=5)
    info, key = await create_key(db, "acme")
    assert await ring.find(key) == info
    made_up = ["jq_" + secrets.token_urlsafe(32) for _ in range(50)]
    for unknown in made_up:
        assert await ring.find(unknown) is None
    # the known key is still remembered: a revoke is not seen within the period
    await revoke_key(db, info.key_id)
    cached = await ring.find(key)
    assert cached is not None and cached.revoked_at is None
    # and the unknown ones stay bounded: the latest are remembered, the oldest re-read
    await api_keys(db).insert_one({
        "_id": "key_late", "key_hash": hash_key(made_up[0]), "prefix": made_up[0][:10],
        "tenant": "acme", "scopes": ["read"], "submit_rate": None,
        "created_at": info.created_at, "revoked_at": None})
    late = await ring.find(made_up[0])
    assert late is not None and late.key_id == "key_late"


@pytest.mark.parametrize("key", [
    "jq_" + "A" * 42, "jq_" + "A" * 44, "jq_" + "A" * 42 + "=", "JQ_" + "A" * 43,
    "jq_" + "A" * 42 + "\u00e9", "nonsense", ""])
async def test_a_malformed_key_is_refused_without_a_read(key: str) -> None:
    # NOTE: a real client of a MongoDB that is not there: any read would fail loudly.
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        "mongodb://127.0.0.1:9/", serverSelectionTimeoutMS=200)
    try:
        ring = KeyRing(client["nowhere"]["api_keys"], ttl=60)
        assert await ring.find(key) is None
        with pytest.raises(PyMongoError):
            await ring.find("jq_" + secrets.token_urlsafe(32))  # well-formed: read
    finally:
        await client.close()
