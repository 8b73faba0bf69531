"""Files that jobs produce, stored in MongoDB GridFS (bucket ``artifacts``), named by job
and file name, served by the API and deleted with their job.

A file's id is ``"<job id>/<random hex>"`` (job ids never contain ``/``), so every chunk
names its job even before, or without, its files record: an upload killed after its
chunks were written, before the record that lists them, leaves chunks that are still
found (a range of ``files_id``, through GridFS's own chunks index) and deleted with the
job. Files stored before this scheme have ObjectId ids and are found by their records.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import IO, Any

from gridfs import AsyncGridFSBucket
from gridfs.asynchronous.grid_file import AsyncGridOut
from pymongo import DeleteMany
from pymongo.asynchronous.database import AsyncDatabase

from shared.models import Artifact

CHUNK = 1024 * 1024
BUCKET = "artifacts"


def new_file_id(job_id: str) -> str:
    """A new file id for a file of this job (see the module doc)."""
    return f"{job_id}/{uuid.uuid4().hex}"


def file_ids_of(job_id: str) -> dict[str, str]:
    """The range of the file ids ``new_file_id`` makes for this job ('0' follows '/')."""
    return {"$gte": f"{job_id}/", "$lt": f"{job_id}0"}


class ArtifactStore:
    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        self.bucket = AsyncGridFSBucket(db, bucket_name=BUCKET)
        self.files = db[f"{BUCKET}.files"]
        self.chunks = db[f"{BUCKET}.chunks"]

    async def ensure_indexes(self) -> None:
        await self.files.create_index([("metadata.job_id", 1), ("metadata.name", 1)])

    async def save(self, job_id: str, name: str, data: bytes | IO[bytes],
                   content_type: str) -> Artifact:
        """Store a file for a job (replacing one of the same name an earlier run left).
        ``data`` may be a file object: it is copied a chunk at a time."""
        await self.delete(job_id, name)
        upload = self.bucket.open_upload_stream_with_id(
            new_file_id(job_id), f"{job_id}/{name}",
            metadata={"job_id": job_id, "name": name, "content_type": content_type})
        try:
            if isinstance(data, bytes):
                await upload.write(data)
            else:
                while chunk := data.read(CHUNK):
                    await upload.write(chunk)
        except BaseException:
            await upload.abort()
            raise
        await upload.close()
        return Artifact(name=name, content_type=content_type, size=upload.length)

    async def open(self, job_id: str, name: str) -> AsyncGridOut | None:
        found = await self.files.find_one({"metadata.job_id": job_id, "metadata.name": name})
        if found is None:
            return None
        return await self.bucket.open_download_stream(found["_id"])

    async def delete(self, job_id: str, name: str | None = None) -> int:
        query: dict[str, Any] = {"metadata.job_id": job_id}
        if name is not None:
            query["metadata.name"] = name
        ids = [f["_id"] async for f in self.files.find(query, {"_id": 1})]
        for file_id in ids:
            await self.bucket.delete(file_id)
        return len(ids)

    async def delete_for_jobs(self, job_ids: list[str]) -> int:
        """Delete every file of these jobs in three round trips; return how many files
        had records. Chunks go first, by their jobs' id ranges (so chunks whose upload
        died before its files record go too) and by the ids of older files' records;
        the records last, so an interrupted delete is found again and finished by the
        next call."""
        if not job_ids:
            return 0
        ids = [f["_id"] async for f in self.files.find(
            {"metadata.job_id": {"$in": job_ids}}, {"_id": 1})]
        # NOTE: one DeleteMany per job, not one $or of ranges: each statement is planned
        # on its own and walks the (files_id, n) index; an $or of hundreds of ranges is a
        # collection scan on some servers (the embedded one).
        older = [i for i in ids if not isinstance(i, str)]
        await self.chunks.bulk_write(
            [DeleteMany({"files_id": file_ids_of(job_id)}) for job_id in job_ids]
            + ([DeleteMany({"files_id": {"$in": older}})] if older else []),
            ordered=False)
        if ids:
            await self.files.delete_many({"_id": {"$in": ids}})
        return len(ids)


@dataclass
class JobArtifacts:
    """A run's view of the artifact store: what it saves is listed on the job."""

    store: ArtifactStore
    job_id: str
    saved: list[Artifact] = field(default_factory=list)

    async def save(self, name: str, data: bytes | IO[bytes], content_type: str) -> Artifact:
        if "/" in name or not name.strip():
            raise ValueError("an artifact name is a plain file name")
        artifact = await self.store.save(self.job_id, name, data, content_type)
        self.saved = [a for a in self.saved if a.name != name] + [artifact]
        return artifact

    def download_path(self, name: str) -> str:
        return f"/jobs/{self.job_id}/artifacts/{name}"
