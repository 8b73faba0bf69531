from __future__ import annotations

from typing import Any

import httpx
import pytest

from services.runtime import Stores
from tests.support import submit, wait_finished


@pytest.fixture
async def run_job(api: httpx.AsyncClient, stores: Stores, background: Any,
                  scheduler: Any) -> Any:
    """Submit one job over the API, let a background worker run it (and the scheduler
    retry it), return its stored document."""
    background()

    async def run(job_type: str, payload: dict[str, Any], timeout: float = 20,
                  **fields: Any) -> dict[str, Any]:
        job = await submit(api, job_type, payload, **fields)
        doc: dict[str, Any] = (await wait_finished(stores.jobs, [job], timeout))[job]
        return doc

    return run
