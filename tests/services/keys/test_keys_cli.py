"""``jobqueue keys`` as a real command: create prints the key alone on the last line,
list shows no secret, revoke makes the API refuse the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from services.runtime import Stores
from shared.apikeys import api_keys, hash_key
from shared.settings import Settings
from tests.support import ROOT, settings_env, wait_until

JOBQUEUE = str(Path(sys.executable).with_name("jobqueue"))  # the installed command


def keys(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([JOBQUEUE, "keys", *args],
                          env=settings_env(settings), cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"api_key_cache_seconds": 0.3})


async def test_create_list_revoke(settings: Settings, stores: Stores,
                                  api: httpx.AsyncClient) -> None:
    made = keys(settings, "create", "--tenant", "acme", "--scope", "read", "--scope",
                "submit", "--submit-rate", "50/s")
    assert made.returncode == 0, made.stderr
    output = made.stdout.splitlines()
    key = output[-1]
    assert key.startswith("jq_") and len(key) == 46 and " " not in key
    assert key not in "\n".join(output[:-1])
    key_id = next(line.split()[-1] for line in output if line.startswith("key id:"))
    stored = await api_keys(stores.mongo[settings.mongodb_database]).find_one({"_id": key_id})
    assert stored is not None and stored["key_hash"] == hash_key(key)
    assert stored["scopes"] == ["read", "submit"] and stored["submit_rate"] == "50/1s"

    headers = {"Authorization": f"Bearer {key}"}
    r = await api.post("/jobs", json={"jobType": "echo", "payload": {"text": "x"}},
                       headers=headers)
    assert r.status_code == 202

    listed = keys(settings, "list")
    assert listed.returncode == 0, listed.stderr
    assert key_id in listed.stdout and key[:10] in listed.stdout and "acme" in listed.stdout
    assert key not in listed.stdout and key[10:20] not in listed.stdout

    revoked = keys(settings, "revoke", key_id)
    assert revoked.returncode == 0 and key_id in revoked.stdout

    async def refused() -> bool:
        return (await api.get("/jobs", headers=headers)).status_code == 401

    await wait_until(refused, 20, "the revoked key to be refused")
    row = next(line for line in keys(settings, "list").stdout.splitlines() if key_id in line)
    assert row.split()[-1] != "-"  # the revoke time
    assert keys(settings, "revoke", "key_nope").returncode == 1


@pytest.mark.parametrize("args", [
    ["create"], ["create", "--tenant", "Not Valid"], ["create", "--tenant", "a", "--scope", "x"],
    ["create", "--tenant", "a", "--submit-rate", "lots"]])
def test_create_refuses_bad_arguments(settings: Settings, args: list[str]) -> None:
    result = keys(settings, *args)
    assert result.returncode == 2, result.stdout
    assert "jq_" not in result.stdout
