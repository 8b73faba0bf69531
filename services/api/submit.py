"""Accepting jobs: validation against the job type, idempotency, and group commit.

Concurrent submissions wait at most ``submit_batch_window_ms`` to be inserted together
(one ``insert_many``) and enqueued together (one Redis transaction); each caller still
gets its answer only after MongoDB has its job. If Redis fails after the insert the job
is still accepted: the scheduler's reconciler enqueues it (nothing accepted is lost).

Every waiter gets an answer, whatever fails: each document is BSON-encoded on its own
before the batch insert, so one that cannot be encoded is refused alone (422); a batch
that fails in any other way answers each of its waiters with an error. Should the
flusher itself die, every waiter is answered (503), the error is logged as critical
and ``on_fatal`` is called: the API process shuts down gracefully and exits with
status 70 (services/api/app.py), so a supervisor restarts it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import bson
import pymongo
from bson.raw_bson import RawBSONDocument
from pydantic import ValidationError
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, PyMongoError, ServerSelectionTimeoutError

from services.api import storable
from services.api.errors import field_errors
from services.api.schemas import SubmitRequest
from shared import transitions
from shared.clock import RedisClock, to_ms
from shared.errors import Conflict, InvalidInput, StoreUnavailable
from shared.ids import new_job_id
from shared.jobtypes import JobType
from shared.logs import get_log
from shared.outbound import OutboundGuard
from shared.queue import Enqueue, RedisQueue
from shared.settings import Settings
from shared.status import JobStatus, Priority
from shared.tenants import DEFAULT_TENANT

log = get_log(__name__)
DUPLICATE_KEY = 11000
INSERT_CHUNK_BYTES = 2 * 1024 * 1024
"""A group commit inserts at most this much per operation, so each stays well within
the API's per-operation MongoDB budget."""


@dataclass(frozen=True)
class Accepted:
    job_id: str
    status: JobStatus
    created: bool
    """False when an idempotency key matched an earlier job (answered 200, not 202)."""


Waiter = tuple[dict[str, Any], asyncio.Future[Accepted]]
"""A submission's fields and the future its caller awaits."""


def request_hash(request: SubmitRequest) -> str:
    body = request.model_dump(mode="json", exclude={"idempotency_key"}, exclude_none=True)
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


class Submitter:
    def __init__(self, settings: Settings, jobs: AsyncCollection[dict[str, Any]],
                 queue: RedisQueue, clock: RedisClock, registry: dict[str, JobType],
                 on_fatal: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.jobs = jobs
        self.queue = queue
        self.clock = clock
        self.registry = registry
        self.on_fatal = on_fatal
        """Called once the flusher died of an unexpected error (after every waiter got
        an answer): the process should stop, it can no longer accept jobs reliably."""
        self._pending: list[Waiter] = []
        self._flusher: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()

    # -- validation -------------------------------------------------------------------

    async def prepare(self, request: SubmitRequest, *, where: tuple[Any, ...] = (),
                      tenant: str = DEFAULT_TENANT) -> dict[str, Any]:
        """Validate one submission of ``tenant``; return the fields of its document
        (without status).

        Raises InvalidInput with field-level details (``where`` prefixes the field
        paths, e.g. ``("jobs", 3)`` in a batch).
        """
        job_type = self.registry.get(request.job_type)
        if job_type is None:
            raise InvalidInput(f"unknown jobType {request.job_type!r}", details=[{
                "field": ".".join(map(str, (*where, "jobType"))),
                "message": f"known job types: {', '.join(sorted(self.registry))}",
                "type": "unknown_job_type"}])
        # NOTE: before the type's schema sees it: a payload too deep or unstorable for
        # MongoDB is refused whatever the type accepts (free-form fields included).
        unstorable = storable.problems(request.payload, (*where, "payload"))
        if unstorable:
            raise InvalidInput("the payload cannot be stored as sent", details=unstorable)
        try:
            payload = job_type.payload.model_validate(request.payload,
                                                      context={"settings": self.settings})
        except ValidationError as exc:
            raise InvalidInput(f"payload does not match the {request.job_type} schema",
                               details=field_errors(exc.errors(), (*where, "payload"))) from None
        if request.callback_url is not None:
            await OutboundGuard(self.settings.webhook_allowed_hosts,
                                ".".join(map(str, (*where, "callbackUrl")))
                                ).check(request.callback_url)
        run_at = request.run_at  # timezone-aware UTC (schemas.SubmitRequest)
        if request.delay_seconds:
            run_at = self.clock.now() + timedelta(seconds=request.delay_seconds)
        return {
            "_id": new_job_id(),
            "tenant": tenant,
            "job_type": request.job_type,
            "payload": payload.model_dump(mode="json"),
            "priority": request.priority.value,
            "max_retries": _first(request.max_retries, job_type.max_retries,
                                  self.settings.default_max_retries),
            "timeout_seconds": _first(request.timeout_seconds, job_type.timeout_seconds,
                                      self.settings.default_timeout_seconds),
            "run_at": run_at,
            "callback_url": request.callback_url,
            "callback_events": (None if request.callback_events is None
                                else [e.value for e in request.callback_events]),
            **({"idempotency_key": request.idempotency_key,
                "request_hash": request_hash(request)} if request.idempotency_key else {}),
            "retention_seconds": _first(request.retention_seconds,
                                        self.settings.retention_seconds),
            "history_limit": self.settings.history_limit,
        }

    # -- accepting --------------------------------------------------------------------

    async def submit(self, fields: dict[str, Any]) -> Accepted:
        key = fields.get("idempotency_key")
        if key:
            earlier = await self.jobs.find_one({"tenant": _tenant(fields),
                                                "idempotency_key": key})
            if earlier:
                return self._same_request(earlier, fields)
        return await self._commit(fields)

    async def _commit(self, fields: dict[str, Any]) -> Accepted:
        """Wait for the group commit that stores ``fields``."""
        future: asyncio.Future[Accepted] = asyncio.get_running_loop().create_future()
        self._pending.append((fields, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_soon())
        return await future

    async def submit_batch(self, batch: list[dict[str, Any]]) -> list[Accepted]:
        """Accept prepared submissions all together, or none.

        Idempotency keys are checked before anything is stored: a key used twice in
        the batch for different requests, or already used for a different request,
        refuses the whole batch (409). A key repeated with the identical request is one
        job, answered at each of its places; a key matching an earlier identical
        request answers that job.
        """
        owner = _first_use_of_keys(batch)
        earlier: dict[str, Accepted] = {}
        if owner:
            # NOTE: one caller's batch: every job in it has the same tenant.
            async for doc in self.jobs.find({"tenant": _tenant(batch[0]),
                                             "idempotency_key": {"$in": list(owner)}}):
                key = doc["idempotency_key"]
                earlier[key] = self._same_request(doc, batch[owner[key]])
        # NOTE: a concurrent submit with the same key can still land between this check
        # and the insert; that rare race answers 409 after the others were stored.
        to_store = [i for i, fields in enumerate(batch)
                    if (key := fields.get("idempotency_key")) is None
                    or (owner[key] == i and key not in earlier)]
        results = await asyncio.gather(*(self._commit(batch[i]) for i in to_store))
        stored = dict(zip(to_store, results, strict=True))
        answers = []
        for i, fields in enumerate(batch):
            if i in stored:
                answers.append(stored[i])
                continue
            key = fields["idempotency_key"]  # not stored itself: a key already answered
            answers.append(earlier[key] if key in earlier else stored[owner[key]])
        return answers

    async def close(self) -> None:
        if self._flusher:
            await asyncio.gather(self._flusher, return_exceptions=True)

    async def _flush_soon(self) -> None:
        batch: list[Waiter] = []
        try:
            await asyncio.sleep(self.settings.submit_batch_window_ms / 1000)
            while self._pending:
                batch = self._pending[: self.settings.submit_batch_max]
                del self._pending[: len(batch)]
                if await self._flush(batch):
                    # NOTE: MongoDB just failed to answer: the submits that queued up
                    # meanwhile are answered now rather than made to wait it out again.
                    waiting, self._pending = self._pending, []
                    _fail_all(waiting, StoreUnavailable(
                        "MongoDB is unreachable; the job was not stored, try again"))
        except BaseException as exc:
            # NOTE: a waiter must never hang: whatever stops the flusher (a bug, or
            # cancellation at shutdown) answers the batch in hand and every job waiting.
            waiting, self._pending = [*batch, *self._pending], []
            _fail_all(waiting, StoreUnavailable("the API is stopping; the job was not "
                                                "stored, try again"))
            if not isinstance(exc, asyncio.CancelledError):
                log.critical("submit.flusher_died", error=str(exc),
                             errorType=type(exc).__name__, waiting=len(waiting))
                if self.on_fatal is not None:
                    self.on_fatal()
            raise

    async def _flush(self, batch: list[Waiter]) -> bool:
        """Store and enqueue one batch; every waiter in it is answered, whatever fails
        (a cancellation is answered by _flush_soon). True when MongoDB did not answer."""
        try:
            return await self._store(batch)
        except Exception as exc:
            log.exception("submit.flush_failed", jobs=len(batch), errorType=type(exc).__name__)
            _fail_all(batch, StoreUnavailable("the job could not be stored; try again"))
            return False

    async def _store(self, batch: list[Waiter]) -> bool:
        now = self.clock.now()
        built, encoded, waiting = [], [], []
        for fields, future in batch:
            doc, event = transitions.new_job(fields, now)
            try:
                raw = RawBSONDocument(bson.encode(doc, codec_options=self.jobs.codec_options))
            except Exception as exc:
                # NOTE: one unencodable document is refused alone, not with its batch.
                _resolve(future, exc=InvalidInput(
                    "the job cannot be stored in MongoDB", code="unstorable",
                    details=[{"field": "payload", "message": str(exc)[:300],
                              "type": type(exc).__name__}]))
                continue
            built.append((doc, event))
            encoded.append(raw)
            waiting.append((fields, future))
        if not encoded:
            return False
        failed, unconfirmed, unsent = await self._insert(encoded, [d["_id"] for d, _ in built])
        stored = [(doc, event) for i, (doc, event) in enumerate(built)
                  if i not in failed and i not in unconfirmed and i not in unsent]
        await self._enqueue(stored)
        for i, ((fields, future), (doc, _)) in enumerate(zip(waiting, built, strict=True)):
            if i in unconfirmed:
                _resolve(future, exc=StoreUnavailable(
                    "MongoDB did not confirm the write in time; the job may or may not be "
                    "stored: submit again with the same idempotencyKey to be sure",
                    code="store_unconfirmed"))
            elif i in unsent:
                _resolve(future, exc=StoreUnavailable(
                    "MongoDB is unreachable; the job was not stored, try again"))
            elif i not in failed:
                _resolve(future, Accepted(doc["_id"], JobStatus(doc["status"]), True))
            elif failed[i].get("code") == DUPLICATE_KEY and fields.get("idempotency_key"):
                task = asyncio.create_task(self._resolve_duplicate(fields, future))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
            else:
                log.warning("submit.insert_refused", jobId=doc["_id"],
                            error=str(failed[i].get("errmsg"))[:300])
                _resolve(future, exc=StoreUnavailable("the job could not be stored"))
        return bool(unconfirmed or unsent)

    async def _insert(self, encoded: list[RawBSONDocument], ids: list[str]
                      ) -> tuple[dict[int, dict[str, Any]], set[int], set[int]]:
        """Insert in chunks of at most INSERT_CHUNK_BYTES, each its own operation (with
        its own time budget). Returns the write errors by index, the indexes MongoDB did
        not confirm (it did not answer; they may be stored), and those never sent
        (after MongoDB stopped answering)."""
        failed: dict[int, dict[str, Any]] = {}
        start = 0
        for end in _chunk_ends([len(raw.raw) for raw in encoded], INSERT_CHUNK_BYTES):
            try:
                await self.jobs.insert_many(encoded[start:end], ordered=False)
            except BulkWriteError as exc:
                failed.update({start + e["index"]: e
                               for e in exc.details.get("writeErrors", [])})
            except ServerSelectionTimeoutError as exc:
                # NOTE: no server to send to: certainly not stored.
                log.warning("submit.mongodb_unreachable", error=str(exc)[:300])
                return failed, set(), set(range(start, len(ids)))
            except PyMongoError as exc:
                log.warning("submit.insert_unanswered", jobs=end - start,
                            errorType=type(exc).__name__, error=str(exc)[:300])
                stored_ids = await self._confirm_stored(ids[start:end])
                if stored_ids is None:
                    return failed, set(range(start, end)), set(range(end, len(ids)))
                failed.update({i: {"errmsg": str(exc)} for i in range(start, end)
                               if ids[i] not in stored_ids})
            start = end
        return failed, set(), set()

    async def _confirm_stored(self, ids: list[str]) -> set[str] | None:
        """Which of these just-inserted ids MongoDB has, after an insert whose answer
        never came (a lost reply may hide a write that applied); None if it cannot say.

        NOTE: briefly: a MongoDB that stopped answering must still cost the caller less
        than the 5 s a 503 may take."""
        try:
            with pymongo.timeout(min(1.0, self.settings.mongodb_timeout_seconds / 2)):
                return {d["_id"] async for d in self.jobs.find({"_id": {"$in": ids}},
                                                                {"_id": 1})}
        except PyMongoError:
            return None

    async def _enqueue(self, stored: list[tuple[dict[str, Any], Any]]) -> None:
        work = [Enqueue(doc["_id"], Priority(doc["priority"]),
                        to_ms(doc["run_at"]) if doc["status"] == JobStatus.SCHEDULED else None,
                        tenant=doc.get("tenant", DEFAULT_TENANT))
                for doc, _ in stored]
        try:
            await self.queue.enqueue(work, [event.to_json() for _, event in stored])
        except Exception as exc:
            # NOTE: the jobs are in MongoDB, so they are accepted whatever failed here
            # (usually Redis being down); the reconciler will enqueue them.
            log.warning("submit.enqueue_deferred", jobs=len(work), error=str(exc),
                        errorType=type(exc).__name__)

    async def _resolve_duplicate(self, fields: dict[str, Any],
                                 future: asyncio.Future[Accepted]) -> None:
        try:
            earlier = await self.jobs.find_one({"tenant": _tenant(fields),
                                                "idempotency_key": fields["idempotency_key"]})
            if earlier is None:  # deleted in between: a fresh submission is fine
                _resolve(future, await self.submit(fields))
            else:
                _resolve(future, self._same_request(earlier, fields))
        except Exception as exc:
            _resolve(future, exc=exc)

    @staticmethod
    def _same_request(earlier: dict[str, Any], fields: dict[str, Any]) -> Accepted:
        if earlier.get("request_hash") != fields.get("request_hash"):
            raise Conflict("idempotencyKey was already used for a different request",
                           code="idempotency_conflict",
                           details={"jobId": earlier["_id"]})
        return Accepted(earlier["_id"], JobStatus(earlier["status"]), False)


def _first_use_of_keys(batch: list[dict[str, Any]]) -> dict[str, int]:
    """Each idempotency key of the batch and where it is first used; Conflict when a
    key comes back with a different request."""
    owner: dict[str, int] = {}
    for i, fields in enumerate(batch):
        key = fields.get("idempotency_key")
        if key is None:
            continue
        j = owner.setdefault(key, i)
        if batch[j]["request_hash"] != fields["request_hash"]:
            raise Conflict("idempotencyKey is used twice in the batch for different "
                           "requests; nothing was stored", code="idempotency_conflict",
                           details={"jobs": [j, i], "idempotencyKey": key})
    return owner


def _chunk_ends(sizes: list[int], max_bytes: int) -> list[int]:
    """End indexes of consecutive chunks of at most ``max_bytes`` (at least one item)."""
    ends, total = [], 0
    for i, size in enumerate(sizes):
        if total and total + size > max_bytes:
            ends.append(i)
            total = 0
        total += size
    return [*ends, len(sizes)]


def _tenant(fields: dict[str, Any]) -> str:
    tenant: str = fields.get("tenant", DEFAULT_TENANT)
    return tenant


def _first(*values: Any) -> Any:
    return next(v for v in values if v is not None)


def _fail_all(waiters: list[Waiter], exc: Exception) -> None:
    """Answer with ``exc`` every waiter not answered yet."""
    for _, future in waiters:
        _resolve(future, exc=exc)


def _resolve(future: asyncio.Future[Accepted], value: Accepted | None = None,
             exc: BaseException | None = None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(value)  # type: ignore[arg-type]
