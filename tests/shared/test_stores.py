"""Opening MongoDB: indexes earlier versions made and no longer want are dropped."""

from __future__ import annotations

from typing import Any

from pymongo import AsyncMongoClient

from shared.settings import Settings
from shared.stores import open_mongo


async def index_names(client: AsyncMongoClient[dict[str, Any]], settings: Settings
                      ) -> set[str]:
    jobs = client[settings.mongodb_database]["jobs"]
    return {index["name"] async for index in await jobs.list_indexes()}


async def test_a_database_from_before_tenants_loses_its_global_idempotency_index(
        settings: Settings) -> None:
    assert settings.mongodb_url
    old: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongodb_url)
    try:
        jobs = old[settings.mongodb_database]["jobs"]
        await jobs.create_index("idempotency_key", unique=True, sparse=True,
                                name="idempotency_key_unique")
        client = await open_mongo(settings)
        try:
            names = await index_names(client, settings)
            assert "idempotency_key_unique" not in names
            assert "tenant_idempotency_key_unique" in names
            # two tenants may now use one key
            for tenant in ("a", "b"):
                await jobs.insert_one({"tenant": tenant, "idempotency_key": "k"})
            await (await open_mongo(settings)).close()  # a second start drops nothing
        finally:
            await client.close()
    finally:
        await old.close()
