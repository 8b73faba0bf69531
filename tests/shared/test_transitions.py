"""Transitions against the real MongoDB wire server: conditional, fenced, recorded."""

import pytest

from services.runtime import Stores
from shared import transitions
from shared.errors import Conflict
from shared.ids import new_job_id
from shared.models import ErrorInfo


def fields(**extra: object) -> dict[str, object]:
    return {"_id": new_job_id(), "job_type": "echo", "payload": {}, "priority": "default",
            "max_retries": 3, "timeout_seconds": 5, "run_at": None, **extra}


async def test_a_stale_writer_is_fenced_out(stores: Stores) -> None:
    now = stores.clock.now()
    doc, event = transitions.new_job(fields(), now)
    assert (doc["status"], doc["seq"], event.type) == ("QUEUED", 1, "job.queued")
    await stores.jobs.insert_one(doc)

    first = transitions.claim(doc, entry_id="1-0", worker_id="w1", now=now)
    second = transitions.claim(doc, entry_id="2-0", worker_id="w2", now=now)
    assert await transitions.apply(stores.jobs, [first]) == [first]
    assert await transitions.apply(stores.jobs, [second]) == []  # same expected seq: lost

    done = transitions.complete(transitions.advanced(doc, first), {"x": 1}, now)
    late = transitions.fail(transitions.advanced(doc, first),
                            ErrorInfo(type="E", message="late"), now)
    assert await transitions.apply(stores.jobs, [done, late]) == [done]
    stored = await stores.jobs.find_one({"_id": doc["_id"]})
    assert stored["status"] == "COMPLETED" and stored["result"] == {"x": 1}
    assert [h["status"] for h in stored["history"]] == ["QUEUED", "PROCESSING", "COMPLETED"]
    assert stored["seq"] == 3


async def test_illegal_transitions_are_refused(stores: Stores) -> None:
    doc, _ = transitions.new_job(fields(), stores.clock.now())
    doc["status"] = "COMPLETED"
    with pytest.raises(Conflict):
        transitions.cancel(doc, stores.clock.now())
    with pytest.raises(Conflict):
        transitions.requeue(doc, stores.clock.now())


async def test_outbox_gets_only_wanted_events(stores: Stores) -> None:
    now = stores.clock.now()
    doc, _ = transitions.new_job(fields(callback_url="http://127.0.0.1/hook",
                                        callback_events=["job.completed"]), now)
    assert doc["outbox"] == []
    claimed = transitions.claim(doc, entry_id="1-0", worker_id="w", now=now)
    assert not claimed.to_outbox
    completed = transitions.complete(transitions.advanced(doc, claimed), None, now)
    assert completed.to_outbox and completed.update["$push"]["outbox"]["seq"] == 3
