from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.settings import Settings
from tests.support import Service, spawn


@pytest.fixture
def services(settings: Settings, tmp_path: Path) -> Iterator[object]:
    """Start real service processes; every one still running is killed at teardown."""
    started: list[Service] = []

    def start(name: str, *args: str, env: dict[str, str] | None = None,
              with_settings: Settings | None = None) -> Service:
        started.append(spawn(name, with_settings or settings, tmp_path / "out", *args,
                             env=env))
        return started[-1]

    yield start
    for service in started:
        if service.process.poll() is None:
            service.kill()
