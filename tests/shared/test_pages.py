"""Keyset pages in (created_at, _id) order: every job exactly once, in order, also when
more jobs than a page share one created_at (a batch)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.runtime import Stores
from shared import pages

T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def all_pages(stores: Stores, query: dict[str, Any], limit: int, *,
                    newest_first: bool) -> list[list[str]]:
    seen: list[list[str]] = []
    after: pages.Position | None = None
    while True:
        found = await pages.page(stores.jobs, query, {"_id": 1, "created_at": 1}, after,
                                 limit, newest_first=newest_first)
        if not found:
            return seen
        seen.append([d["_id"] for d in found])
        after = (found[-1]["created_at"], found[-1]["_id"])


@pytest.mark.parametrize("newest_first", [False, True])
async def test_pages_cover_every_job_once_in_order(stores: Stores, newest_first: bool
                                                   ) -> None:
    # 3 single jobs, then a batch of 7 created at one moment, then 2 more
    stamps = [T0, T0 + timedelta(seconds=1), T0 + timedelta(seconds=2),
              *[T0 + timedelta(seconds=3)] * 7, T0 + timedelta(seconds=4),
              T0 + timedelta(seconds=5)]
    docs = [{"_id": f"job_{i:02d}", "created_at": at, "status": "QUEUED",
             "tenant": "t" if i % 4 else "other"} for i, at in enumerate(stamps)]
    await stores.jobs.insert_many(docs)
    expected = sorted(docs, key=lambda d: (d["created_at"], d["_id"]), reverse=newest_first)
    mine = [d["_id"] for d in expected if d["tenant"] == "t"]

    for limit in (1, 3, 5, 20):
        got = await all_pages(stores, {"tenant": "t"}, limit, newest_first=newest_first)
        assert [job for p in got for job in p] == mine, limit
        assert all(len(p) <= limit for p in got)
