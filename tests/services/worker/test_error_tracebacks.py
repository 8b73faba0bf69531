"""A failed job's traceback, as the API serves it, names no server paths."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.runtime import Stores
from shared.tracebacks import PROJECT_ROOT
from tests.support import submit, wait_finished


@pytest.mark.parametrize("job_type", ["permanent", "permanent_in_process"])
async def test_traceback_of_a_failed_job_has_no_server_paths(
        api: httpx.AsyncClient, stores: Stores, make_worker: Any, tmp_path: Path,
        job_type: str) -> None:
    job = await submit(api, job_type, {"path": str(tmp_path / "runs")})
    await make_worker(concurrency=1).run(burst=True)
    await wait_finished(stores.jobs, [job], 30)
    body = (await api.get(f"/jobs/{job}")).json()
    assert body["status"] == "FAILED"
    tb = body["error"]["traceback"]
    files = re.findall(r'File "([^"]+)", line \d+', tb)
    assert files, tb  # the frames the stored tail keeps, each relative to the project
    assert all(f.startswith(("shared/", "services/", "tests/")) for f in files), files
    assert str(PROJECT_ROOT) not in tb and "site-packages" not in tb
    for entry in body["history"]:
        if entry.get("error") and entry["error"].get("traceback"):
            assert str(PROJECT_ROOT) not in entry["error"]["traceback"]
