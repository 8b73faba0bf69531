"""The outbound guard refuses internal targets at submit (422, field named)."""

import httpx
import pytest

from services.runtime import Stores
from shared.outbound import OutboundGuard, UrlRefused

REFUSED = [
    "http://169.254.169.254/latest/meta-data", "http://10.0.0.5/hook", "http://172.16.3.4/",
    "http://192.168.1.10/", "http://100.64.0.1/", "http://0.0.0.0/", "http://[::1]/",
    "http://[::ffff:169.254.169.254]/", "http://2852039166/", "http://0251.0376.0251.0376/",
    "http://0xA9FEA9FE/", "file:///etc/passwd", "ftp://example.com/",
    "http://user:secret@example.com/", "http://127.0.0.2/", "http://[fe80::1]/",
    "http://224.0.0.1/",
]


@pytest.mark.parametrize("url", REFUSED)
async def test_internal_targets_are_refused_at_submit(api: httpx.AsyncClient, stores: Stores,
                                                      url: str) -> None:
    r = await api.post("/jobs", json={"jobType": "echo", "payload": {"text": "x"},
                                      "callbackUrl": url})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"][0]["field"] == "callbackUrl"
    assert await stores.jobs.count_documents({}) == 0


async def test_allow_list_names_hosts_and_networks() -> None:
    for allowed in (["127.0.0.1"], ["127.0.0.0/8"]):
        target = await OutboundGuard(allowed).check("http://127.0.0.1:9/hook")
        assert target.address == "127.0.0.1"
    with pytest.raises(UrlRefused):
        await OutboundGuard([]).check("http://127.0.0.1:9/hook")


async def test_connection_is_pinned_to_the_checked_address() -> None:
    target = await OutboundGuard(["127.0.0.1"]).check("https://127.0.0.1:8443/a?b=1")
    url, headers, extensions = target.pinned_request()
    assert str(url) == "https://127.0.0.1:8443/a?b=1"
    assert headers == {"Host": "127.0.0.1:8443"} and extensions == {"sni_hostname": "127.0.0.1"}
