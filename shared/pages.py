"""Keyset pages of jobs in (created_at, _id) order, for the list endpoint and the
reconciler.

The next page after a position (created, last id) is usually asked for with one query,
``$or: [{created_at beyond created}, {created_at == created, _id beyond last id}]``. Some
servers (the embedded one among them) answer a top-level ``$or`` with a collection scan,
so this asks two plain range queries instead, each served by an index that starts with
the query's equality fields and goes on with created_at and _id: first the rest of the
jobs created at that very moment (a batch shares one), then those created after.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection

Position = tuple[datetime, str]
"""Where the previous page ended: its last job's created_at and _id."""


async def page(jobs: AsyncCollection[dict[str, Any]], query: dict[str, Any],
               projection: dict[str, Any], after: Position | None, limit: int, *,
               newest_first: bool) -> list[dict[str, Any]]:
    """Up to ``limit`` jobs matching ``query`` after ``after`` (from the start if None),
    newest or oldest first."""
    beyond, order = ("$lt", -1) if newest_first else ("$gt", 1)
    found: list[dict[str, Any]] = []
    if after is not None:
        created, last_id = after
        found = await jobs.find({**query, "created_at": created, "_id": {beyond: last_id}},
                                projection).sort("_id", order).limit(limit).to_list()
        if len(found) == limit:
            return found
        query = {**query, "created_at": {beyond: created}}
    return found + await jobs.find(query, projection).sort(
        [("created_at", order), ("_id", order)]).limit(limit - len(found)).to_list()
