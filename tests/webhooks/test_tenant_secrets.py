"""Each tenant's webhooks are signed with its own secret: a real notifier, real
MongoDB and Redis, a real receiver, and the reference `standardwebhooks` library."""

from __future__ import annotations

import logging
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
from shared.tenants import (
    DEFAULT_TENANT,
    RotationNotices,
    ensure_tenant,
    rotate_secret,
    signing_secrets,
    tenants_collection,
)
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


def of_job(hooks: Receiver, job: str) -> list[Received]:
    return [r for r in hooks.at("/hook") if f'"jobId":"{job}"'.encode() in r.body]


async def arrived(hooks: Receiver, job: str) -> bool:
    return bool(of_job(hooks, job))


async def cancelled_webhook(api: httpx.AsyncClient, stores: Stores, hooks: Receiver,
                            tenant: str) -> Received:
    """A job of ``tenant`` whose only webhook is job.cancelled; cancel it and return
    that delivery. (The tenant is set in MongoDB before any event is owed.)"""
    job = await submit(api, "echo", {"text": tenant}, delaySeconds=3600,
                       callbackUrl=hooks.url + "/hook", callbackEvents=["job.cancelled"])
    if tenant != DEFAULT_TENANT:
        await stores.jobs.update_one({"_id": job}, {"$set": {"tenant": tenant}})
    assert (await api.post(f"/jobs/{job}/cancel")).status_code == 200
    await wait_until(lambda: arrived(hooks, job), 30, f"the webhook of {tenant}'s job")
    return of_job(hooks, job)[0]


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


async def test_a_rotation_without_grace_stops_the_cached_old_secret_at_once(
        api: httpx.AsyncClient, settings: Settings, stores: Stores,
        notifier: StartNotifier, hooks: Receiver) -> None:
    """The leaked-secret case: the notifier has the old secret cached (and would not
    read again for an hour); `rotate-secret --grace 0` reaches it before the next
    delivery."""
    db = stores.jobs.database
    await ensure_tenant(db, "acme")
    (old,) = await signing_secrets(db, "acme")
    notifier(webhook_secrets_refresh_seconds=3600)
    before = await cancelled_webhook(api, stores, hooks, "acme")
    assert verifies(old.secret, before)

    rotated = jobqueue(settings, "tenants", "rotate-secret", "acme", "--grace", "0")
    assert rotated.returncode == 0 and "WARNING" not in rotated.stderr, rotated.stderr
    new = rotated.stdout.splitlines()[-1]
    after = await cancelled_webhook(api, stores, hooks, "acme")
    assert len(after.headers["webhook-signature"].split()) == 1
    assert verifies(new, after) and not verifies(old.secret, after)


async def test_a_tenant_with_no_usable_secret_waits_and_is_never_signed_as_the_default(
        api: httpx.AsyncClient, settings: Settings, stores: Stores,
        notifier: StartNotifier, hooks: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="services.notifier.notifier")
    db = stores.jobs.database
    await ensure_tenant(db, "acme")
    past = stores.clock.now().replace(year=2000)
    await tenants_collection(db).update_one({"_id": "acme"},
                                            {"$set": {"secrets.0.retire_at": past}})
    notifier(webhook_lease_seconds=2)
    job = await submit(api, "echo", {"text": "acme"}, delaySeconds=3600,
                       callbackUrl=hooks.url + "/hook", callbackEvents=["job.cancelled"])
    await stores.jobs.update_one({"_id": job}, {"$set": {"tenant": "acme"}})
    assert (await api.post(f"/jobs/{job}/cancel")).status_code == 200

    async def tried(times: int) -> bool:
        return sum(r.getMessage() == "notifier.no_signing_key"
                   for r in caplog.records) >= times

    await wait_until(lambda: tried(2), 30, "the delivery to be held back, then tried again")
    assert not hooks.at("/hook")
    assert await stores.deliveries.count_documents({"job_id": job}) == 0

    new = await rotate_secret(db, "acme", 0)
    await RotationNotices(stores.redis, settings.redis_prefix).announce("acme")
    await wait_until(lambda: arrived(hooks, job), 30, "the delivery once acme has a secret")
    (got,) = of_job(hooks, job)
    assert verifies(new, got) and not verifies(TEST_WEBHOOK_SECRET, got)


async def test_the_cli_says_when_it_cannot_do_its_job(settings: Settings,
                                                      stores: Stores) -> None:
    unset = jobqueue(settings.model_copy(update={"webhook_secret": None}),
                     "tenants", "show", DEFAULT_TENANT)
    assert unset.returncode != 0 and unset.stdout == ""
    assert len(unset.stderr.splitlines()) == 1
    assert "JOBQUEUE_WEBHOOK_SECRET" in unset.stderr

    # Redis unreachable: the rotation is stored and printed, with a warning that the
    # notifiers learn of it only at their next refresh
    await ensure_tenant(stores.jobs.database, "acme")
    deaf = jobqueue(settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"}),
                    "tenants", "rotate-secret", "acme", "--grace", "0")
    assert deaf.returncode == 0, deaf.stderr
    assert "WARNING: the notifiers were not told" in deaf.stderr
    assert "JOBQUEUE_WEBHOOK_SECRETS_REFRESH_SECONDS" in deaf.stderr
    assert [s.secret for s in await signing_secrets(stores.jobs.database, "acme")] == [
        deaf.stdout.splitlines()[-1]]
