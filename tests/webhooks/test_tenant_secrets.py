"""Each tenant's webhooks are signed with its own secret: a real notifier, real
MongoDB and Redis, a real receiver, and the reference `standardwebhooks` library."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from services.runtime import Stores
from shared.errors import InvalidSignature
from shared.settings import Settings
from shared.tenants import DEFAULT_TENANT, ensure_tenant, rotate_secret, signing_secrets
from tests.receiver import Received, Receiver, receiver
from tests.support import TEST_WEBHOOK_SECRET, settings_env, submit, wait_until
from tests.webhooks.conftest import StartNotifier
from webhooks import verify
from webhooks.keys import TenantKeys


@pytest.fixture
def hooks() -> Iterator[Receiver]:
    with receiver() as r:
        r.on("/hook", 200)
        yield r


async def cancelled_webhook(api: httpx.AsyncClient, stores: Stores, hooks: Receiver,
                            tenant: str) -> Received:
    """A job of ``tenant`` whose only webhook is job.cancelled; cancel it and return
    that delivery. (The tenant is set in MongoDB before any event is owed.)"""
    job = await submit(api, "echo", {"text": tenant}, delaySeconds=3600,
                       callbackUrl=hooks.url + "/hook", callbackEvents=["job.cancelled"])
    if tenant != DEFAULT_TENANT:
        await stores.jobs.update_one({"_id": job}, {"$set": {"tenant": tenant}})
    assert (await api.post(f"/jobs/{job}/cancel")).status_code == 200

    def mine() -> list[Received]:
        return [r for r in hooks.at("/hook") if f'"jobId":"{job}"'.encode() in r.body]

    async def arrived() -> bool:
        return bool(mine())

    await wait_until(arrived, 30, f"the webhook of {tenant}'s job")
    return mine()[0]


def verifies(secret: str, got: Received) -> bool:
    """Checked by ours and by the reference library; they must agree."""
    try:
        verify(secret, got.body, got.headers)
        ours = True
    except InvalidSignature:
        ours = False
    try:
        Webhook(secret).verify(got.body, got.headers)
        reference = True
    except WebhookVerificationError:
        reference = False
    assert ours == reference
    return ours


async def test_each_tenant_verifies_with_its_own_secret_and_not_another(
        api: httpx.AsyncClient, stores: Stores, notifier: StartNotifier,
        hooks: Receiver) -> None:
    db = stores.jobs.database
    for tenant in ("acme", "globex"):
        await ensure_tenant(db, tenant)
    secrets = {DEFAULT_TENANT: TEST_WEBHOOK_SECRET,
               **{t: (await signing_secrets(db, t))[0].secret for t in ("acme", "globex")}}
    notifier()
    for tenant in ("acme", "globex", DEFAULT_TENANT):
        got = await cancelled_webhook(api, stores, hooks, tenant)
        assert len(got.headers["webhook-signature"].split()) == 1
        for other, secret in secrets.items():
            assert verifies(secret, got) == (other == tenant), (tenant, other)


async def test_a_tenant_without_a_stored_secret_signs_with_the_default(
        api: httpx.AsyncClient, stores: Stores, notifier: StartNotifier,
        hooks: Receiver) -> None:
    notifier()
    got = await cancelled_webhook(api, stores, hooks, "initech")  # never ensured
    assert verifies(TEST_WEBHOOK_SECRET, got)


async def test_rotation_signs_with_both_during_the_grace_then_only_the_new(
        api: httpx.AsyncClient, stores: Stores, notifier: StartNotifier,
        hooks: Receiver) -> None:
    db = stores.jobs.database
    await ensure_tenant(db, "acme")
    (old,) = await signing_secrets(db, "acme")
    keys = notifier(webhook_secrets_refresh_seconds=0.2).deliverer.sender.keys
    assert isinstance(keys, TenantKeys)
    before = await cancelled_webhook(api, stores, hooks, "acme")
    assert verifies(old.secret, before)

    new = await rotate_secret(db, "acme", 10)

    async def keys_are(count: int) -> bool:
        return len(await keys.signing_keys("acme")) == count

    await wait_until(lambda: keys_are(2), 10, "the notifier to see the rotation")
    during = await cancelled_webhook(api, stores, hooks, "acme")
    assert len(during.headers["webhook-signature"].split()) == 2
    assert verifies(old.secret, during) and verifies(new, during)
    assert not verifies(TEST_WEBHOOK_SECRET, during)

    await wait_until(lambda: keys_are(1), 30, "the grace period to end")
    after = await cancelled_webhook(api, stores, hooks, "acme")
    assert len(after.headers["webhook-signature"].split()) == 1
    assert verifies(new, after) and not verifies(old.secret, after)


def jobqueue(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed ``jobqueue`` command, as an operator runs it."""
    command = Path(sys.executable).with_name("jobqueue")
    return subprocess.run([str(command), *args], env=settings_env(settings),
                          capture_output=True, text=True, timeout=120)


async def test_the_cli_prints_a_secret_that_verifies_a_delivered_webhook(
        api: httpx.AsyncClient, settings: Settings, stores: Stores,
        notifier: StartNotifier, hooks: Receiver) -> None:
    db = stores.jobs.database
    await ensure_tenant(db, "acme")
    (old,) = await signing_secrets(db, "acme")
    rotated = jobqueue(settings, "tenants", "rotate-secret", "acme", "--grace", "0")
    assert rotated.returncode == 0, rotated.stderr
    secret = rotated.stdout.splitlines()[-1]
    assert secret.startswith("whsec_") and secret != old.secret

    shown = jobqueue(settings, "tenants", "show", "acme")
    assert shown.returncode == 0, shown.stderr
    assert [line.split()[0] for line in shown.stdout.splitlines()] == [secret]
    listed = jobqueue(settings, "tenants", "list")
    assert listed.stdout.split() == [DEFAULT_TENANT, "acme"]
    default = jobqueue(settings, "tenants", "show", DEFAULT_TENANT)
    assert default.stdout.split() == [TEST_WEBHOOK_SECRET]

    notifier()
    got = await cancelled_webhook(api, stores, hooks, "acme")
    assert verifies(secret, got) and not verifies(old.secret, got)

    unknown = jobqueue(settings, "tenants", "rotate-secret", "nobody")
    assert unknown.returncode != 0 and "no tenant 'nobody'" in unknown.stderr
