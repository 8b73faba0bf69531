"""Accepting jobs: validation against the job type, idempotency, and group commit.

Concurrent submissions wait at most ``submit_batch_window_ms`` to be inserted together
(one ``insert_many``) and enqueued together (one Redis transaction); each caller still
gets its answer only after MongoDB has its job. If Redis fails after the insert the job
is still accepted: the scheduler's reconciler enqueues it (nothing accepted is lost).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, timedelta
from typing import Any

from pydantic import ValidationError
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, PyMongoError
from redis.exceptions import RedisError

from services.api.errors import field_errors
from services.api.schemas import SubmitRequest
from shared import transitions
from shared.clock import RedisClock, to_ms
from shared.errors import Conflict, InvalidInput, StoreUnavailable
from shared.events import event_type
from shared.ids import new_job_id
from shared.jobtypes import JobType
from shared.logs import get_log
from shared.outbound import OutboundGuard
from shared.queue import Enqueue, RedisQueue
from shared.settings import Settings
from shared.status import JobStatus, Priority

log = get_log(__name__)
DUPLICATE_KEY = 11000
EVENT_TYPES = frozenset(event_type(s) for s in JobStatus)


@dataclass(frozen=True)
class Accepted:
    job_id: str
    status: JobStatus
    created: bool
    """False when an idempotency key matched an earlier job (answered 200, not 202)."""


def request_hash(request: SubmitRequest) -> str:
    body = request.model_dump(mode="json", exclude={"idempotency_key"}, exclude_none=True)
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


class Submitter:
    def __init__(self, settings: Settings, jobs: AsyncCollection[dict[str, Any]],
                 queue: RedisQueue, clock: RedisClock, registry: dict[str, JobType]) -> None:
        self.settings = settings
        self.jobs = jobs
        self.queue = queue
        self.clock = clock
        self.registry = registry
        self._pending: list[tuple[dict[str, Any], asyncio.Future[Accepted]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()

    # -- validation -------------------------------------------------------------------

    async def prepare(self, request: SubmitRequest, *,
                      where: tuple[Any, ...] = ()) -> dict[str, Any]:
        """Validate one submission; return the fields of its document (without status).

        Raises InvalidInput with field-level details (``where`` prefixes the field
        paths, e.g. ``("jobs", 3)`` in a batch).
        """
        job_type = self.registry.get(request.job_type)
        if job_type is None:
            raise InvalidInput(f"unknown jobType {request.job_type!r}", details=[{
                "field": ".".join(map(str, (*where, "jobType"))),
                "message": f"known job types: {', '.join(sorted(self.registry))}",
                "type": "unknown_job_type"}])
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
        unknown = set(request.callback_events or ()) - EVENT_TYPES
        if unknown:
            raise InvalidInput("unknown callbackEvents", details=[{
                "field": ".".join(map(str, (*where, "callbackEvents"))),
                "message": f"{sorted(unknown)}; known: {sorted(EVENT_TYPES)}",
                "type": "unknown_event_type"}])
        run_at = request.run_at
        if run_at is not None and run_at.tzinfo is None:
            run_at = run_at.replace(tzinfo=UTC)
        if request.delay_seconds:
            run_at = self.clock.now() + timedelta(seconds=request.delay_seconds)
        return {
            "_id": new_job_id(),
            "job_type": request.job_type,
            "payload": payload.model_dump(mode="json"),
            "priority": request.priority.value,
            "max_retries": _first(request.max_retries, job_type.max_retries,
                                  self.settings.default_max_retries),
            "timeout_seconds": _first(request.timeout_seconds, job_type.timeout_seconds,
                                      self.settings.default_timeout_seconds),
            "run_at": run_at,
            "callback_url": request.callback_url,
            "callback_events": request.callback_events,
            **({"idempotency_key": request.idempotency_key,
                "request_hash": request_hash(request)} if request.idempotency_key else {}),
        }

    # -- accepting --------------------------------------------------------------------

    async def submit(self, fields: dict[str, Any]) -> Accepted:
        key = fields.get("idempotency_key")
        if key:
            earlier = await self.jobs.find_one({"idempotency_key": key})
            if earlier:
                return self._same_request(earlier, fields)
        future: asyncio.Future[Accepted] = asyncio.get_running_loop().create_future()
        self._pending.append((fields, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_soon())
        return await future

    async def close(self) -> None:
        if self._flusher:
            await asyncio.gather(self._flusher, return_exceptions=True)

    async def _flush_soon(self) -> None:
        await asyncio.sleep(self.settings.submit_batch_window_ms / 1000)
        while self._pending:
            batch = self._pending[: self.settings.submit_batch_max]
            del self._pending[: len(batch)]
            await self._flush(batch)

    async def _flush(self, batch: list[tuple[dict[str, Any], asyncio.Future[Accepted]]]) -> None:
        now = self.clock.now()
        built = [transitions.new_job(fields, now) for fields, _ in batch]
        failed: dict[int, dict[str, Any]] = {}
        try:
            await self.jobs.insert_many([doc for doc, _ in built], ordered=False)
        except BulkWriteError as exc:
            failed = {e["index"]: e for e in exc.details.get("writeErrors", [])}
        except PyMongoError as exc:
            for _, future in batch:
                _resolve(future, exc=StoreUnavailable("MongoDB is unreachable; the job was "
                                                      "not stored", details=str(exc)))
            return
        stored = [(doc, event) for i, (doc, event) in enumerate(built) if i not in failed]
        await self._enqueue(stored)
        for i, ((fields, future), (doc, _)) in enumerate(zip(batch, built, strict=True)):
            if i not in failed:
                _resolve(future, Accepted(doc["_id"], JobStatus(doc["status"]), True))
            elif failed[i].get("code") == DUPLICATE_KEY and fields.get("idempotency_key"):
                task = asyncio.create_task(self._resolve_duplicate(fields, future))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
            else:
                _resolve(future, exc=StoreUnavailable("the job could not be stored",
                                                      details=failed[i].get("errmsg")))

    async def _enqueue(self, stored: list[tuple[dict[str, Any], Any]]) -> None:
        work = [Enqueue(doc["_id"], Priority(doc["priority"]),
                        to_ms(doc["run_at"]) if doc["status"] == JobStatus.SCHEDULED else None)
                for doc, _ in stored]
        try:
            await self.queue.enqueue(work, [event.to_json() for _, event in stored])
        except (RedisError, OSError) as exc:
            # NOTE: the jobs are in MongoDB, so they are accepted; the reconciler will
            # enqueue them once Redis answers again.
            log.warning("submit.enqueue_deferred", jobs=len(work), error=str(exc))

    async def _resolve_duplicate(self, fields: dict[str, Any],
                                 future: asyncio.Future[Accepted]) -> None:
        try:
            earlier = await self.jobs.find_one({"idempotency_key": fields["idempotency_key"]})
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


def _first(*values: Any) -> Any:
    return next(v for v in values if v is not None)


def _resolve(future: asyncio.Future[Accepted], value: Accepted | None = None,
             exc: BaseException | None = None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(value)  # type: ignore[arg-type]
