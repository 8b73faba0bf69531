"""Protected mode on a real ``jobqueue api`` process listening on every interface: a
client reaching it through this machine's network address (not loopback) is refused
until a key exists; ``JOBQUEUE_AUTH=disabled`` lets it in. The start-up log says which."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from services.runtime import Stores
from shared.settings import Settings
from tests.support import Service, bearer, lines, spawn, wait_until

ECHO = {"jobType": "echo", "payload": {"text": "hi"}}


def network_address() -> str | None:
    """An IPv4 address of this machine that is not loopback, if it has one."""
    try:
        found = subprocess.run(["hostname", "-I"], capture_output=True, text=True,
                               timeout=10).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    for text in found:
        address = ipaddress.ip_address(text)
        if address.version == 4 and not address.is_loopback:
            return text
    return None


ADDRESS = network_address()
StartApi = Callable[..., tuple[Service, str]]
pytestmark = pytest.mark.skipif(ADDRESS is None, reason="no non-loopback address here")


@pytest.fixture
def start_api(settings: Settings, tmp_path: Path) -> Iterator[StartApi]:
    """Start an API on every interface; return it and its URL at the network address."""
    started: list[Service] = []

    def start(**overrides: object) -> tuple[Service, str]:
        service = spawn("api", settings.model_copy(update=overrides), tmp_path / "out",
                        "--host", "0.0.0.0")
        started.append(service)
        assert service.url
        return service, service.url.replace("127.0.0.1", str(ADDRESS))

    yield start
    for service in started:
        service.stop()


def logged(service: Service, event: str) -> bool:
    return any(json.loads(line).get("event") == event
               for line in lines(service.output) if line.startswith("{"))


async def test_protected_mode_on_a_real_socket(start_api: StartApi, stores: Stores,
                                               settings: Settings) -> None:
    service, remote_url = start_api(api_key_cache_seconds=0.5)
    async with httpx.AsyncClient(base_url=remote_url, timeout=30) as remote, \
            httpx.AsyncClient(base_url=service.url, timeout=30) as local:
        r = await remote.post("/jobs", json=ECHO)
        assert r.status_code == 403 and r.json()["error"]["code"] == "protected_mode"
        assert (await remote.get("/healthz")).status_code == 200
        # NOTE: forwarding headers are not trusted
        spoofed = await remote.get("/jobs", headers={"X-Forwarded-For": "127.0.0.1"})
        assert spoofed.status_code == 403
        assert (await local.post("/jobs", json=ECHO)).status_code == 202
        # uvicorn applies X-Forwarded-For to connections from 127.0.0.1 only (a proxy on
        # this machine): it can make a local connection count as remote, never the reverse
        proxied = await local.get("/jobs", headers={"X-Forwarded-For": "203.0.113.9"})
        assert proxied.status_code == 403
        assert logged(service, "api.protected_mode")

        headers = await bearer(stores.mongo[settings.mongodb_database], "acme")
        assert (await remote.post("/jobs", json=ECHO, headers=headers)).status_code == 202

        async def keys_needed() -> bool:
            return (await local.get("/jobs")).status_code == 401

        await wait_until(keys_needed, 20, "loopback to need a key too")
        assert (await remote.get("/jobs")).status_code == 401


async def test_auth_disabled_on_a_real_socket(start_api: StartApi, stores: Stores,
                                              settings: Settings) -> None:
    await bearer(stores.mongo[settings.mongodb_database], "acme")
    service, remote_url = start_api(auth="disabled")
    async with httpx.AsyncClient(base_url=remote_url, timeout=30) as remote:
        r = await remote.post("/jobs", json=ECHO)
        assert r.status_code == 202
        assert (await remote.get(f"/jobs/{r.json()['jobId']}")).json()["tenant"] == "default"
    assert logged(service, "api.auth_disabled")
