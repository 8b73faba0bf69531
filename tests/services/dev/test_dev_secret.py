"""`jobqueue dev` keeps its webhook signing secret in a file only its owner can read."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.dev.__main__ import dev_webhook_secret
from webhooks.signing import parse_secrets


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A umask that takes nothing away: the file's own creation mode shows."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_the_secret_file_is_created_owner_only(tmp_path: Path, open_umask: None) -> None:
    secret = dev_webhook_secret(tmp_path / "data")
    path = tmp_path / "data" / "webhook_secret"
    assert _mode(path) == 0o600
    assert len(parse_secrets(secret)) == 1 and secret.startswith("whsec_")
    assert dev_webhook_secret(tmp_path / "data") == secret  # made once, then kept


def test_an_existing_looser_file_is_tightened_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "webhook_secret"
    path.write_text("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n")
    path.chmod(0o644)
    assert dev_webhook_secret(tmp_path) == "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    assert _mode(path) == 0o600
