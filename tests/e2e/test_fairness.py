"""Fairness: one tenant's backlog does not starve another's (a real worker process)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.api.schemas import SubmitRequest
from services.api.submit import Submitter
from services.runtime import Stores
from shared.jobtypes import load_handler_modules
from shared.settings import Settings
from shared.status import TERMINAL
from tests.support import wait_finished, wait_until

BACKLOG = 3000
JOB_SECONDS = 0.2  # 8 slots: A's backlog takes 75 s at the very least


async def test_a_few_jobs_start_while_another_tenants_backlog_drains(
        stores: Stores, settings: Settings, services: Any, tmp_path: Path) -> None:
    submitter = Submitter(settings, stores.jobs, stores.queue, stores.clock,
                          load_handler_modules(settings.handler_modules))
    request = SubmitRequest.model_validate({"jobType": "count", "payload": {
        "path": str(tmp_path / "runs"), "seconds": JOB_SECONDS}})

    async def submit_as(tenant: str, n: int) -> list[str]:
        batch = []
        for _ in range(n):
            fields = await submitter.prepare(request)
            batch.append({**fields, "tenant": tenant})
        return [a.job_id for a in await submitter.submit_batch(batch)]

    try:
        backlog = await submit_as("tenant-a", BACKLOG)
        services("worker", "--concurrency", "8")

        async def draining() -> bool:
            return await stores.jobs.count_documents(
                {"_id": {"$in": backlog[:200]}, "status": "COMPLETED"}) >= 16

        await wait_until(draining, 60, "tenant A's backlog to start draining")
        few = await submit_as("tenant-b", 5)
        docs = await wait_finished(stores.jobs, few, 30)
        assert {d["status"] for d in docs.values()} == {"COMPLETED"}
        waits = [(d["started_at"] - d["created_at"]).total_seconds() for d in docs.values()]
        assert max(waits) < 10, waits
        left = await stores.jobs.count_documents(
            {"_id": {"$in": backlog}, "status": {"$nin": [s.value for s in TERMINAL]}})
        assert left > BACKLOG // 2, "tenant B's jobs waited for A's backlog"
    finally:
        await submitter.close()
