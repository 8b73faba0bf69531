"""docker-compose.yml and the Dockerfile keep their exposure rules (checked as files:
no container engine runs here)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.support import ROOT

yaml = pytest.importorskip("yaml")
OURS = ("api", "worker", "scheduler", "notifier")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def test_only_the_api_is_published_and_on_loopback_by_default(compose: dict[str, Any]
                                                              ) -> None:
    services = compose["services"]
    published = {name for name, s in services.items() if s.get("ports")}
    assert published == {"api"}
    (port,) = services["api"]["ports"]
    assert port.startswith("${JOBQUEUE_API_BIND:-127.0.0.1}:")


def test_the_webhook_secret_is_required_and_only_the_notifier_has_it(
        compose: dict[str, Any]) -> None:
    services = compose["services"]
    secret = services["notifier"]["environment"]["JOBQUEUE_WEBHOOK_SECRET"]
    assert secret.startswith("${JOBQUEUE_WEBHOOK_SECRET:?")
    for name in ("api", "worker", "scheduler"):
        assert "JOBQUEUE_WEBHOOK_SECRET" not in services[name]["environment"]
    for name in OURS:
        assert services[name]["environment"]["JOBQUEUE_MONGODB_URL"]


def test_the_image_runs_as_a_non_root_user() -> None:
    users = re.findall(r"^USER\s+(\S+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert users, "the Dockerfile sets no USER"
    assert users[-1].split(":")[0] not in ("root", "0")
