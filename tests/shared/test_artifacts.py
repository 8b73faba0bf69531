"""The artifact store on the real MongoDB server: a file is saved, read back, replaced and
deleted; an upload killed before its files record leaves chunks that still go with their
job (retention, DELETE /jobs/{id}); files stored with ObjectId ids by earlier versions are
read and deleted as before."""

from __future__ import annotations

import asyncio
import io
import sys
from typing import Any

import httpx
from bson import ObjectId

from services.runtime import Stores
from shared.artifacts import ArtifactStore, file_ids_of
from shared.ids import new_job_id
from shared.settings import Settings
from tests.support import ROOT, submit, wait_finished

MIB = 1024 * 1024
BIG = 600_000
"""More than two GridFS chunks (255 KiB each)."""

# A save that streams from a file object which stops reading once the driver has written
# its first 48 MB of chunks (its largest message), long before the files record (written
# at close): the process is then killed mid-upload.
KILLED_SAVE = """
import asyncio, sys, time
from pymongo import AsyncMongoClient
from shared.artifacts import ArtifactStore

class Stalls:
    reads = 0

    def read(self, size):
        self.reads += 1
        if self.reads > 56:
            print("stalled", flush=True)
            time.sleep(3600)
        return bytes([self.reads]) * size

async def main(url, database, job_id):
    store = ArtifactStore(AsyncMongoClient(url)[database])
    await store.save(job_id, "big.bin", Stalls(), "application/octet-stream")

asyncio.run(main(*sys.argv[1:]))
"""


async def chunks_of(store: ArtifactStore, job_id: str) -> int:
    return await store.chunks.count_documents({"files_id": file_ids_of(job_id)})


async def read(store: ArtifactStore, job_id: str, name: str) -> bytes | None:
    grid_out = await store.open(job_id, name)
    return None if grid_out is None else await grid_out.read()


async def lose_files_record(store: ArtifactStore, job_id: str, name: str) -> None:
    """As if the upload had been killed between its chunks and its files record (close
    inserts the chunks, then the record)."""
    result = await store.files.delete_one({"metadata.job_id": job_id, "metadata.name": name})
    assert result.deleted_count == 1


async def test_a_save_killed_mid_upload_leaves_chunks_its_job_deletes(
        stores: Stores, settings: Settings) -> None:
    store = stores.artifacts
    job, neighbour = new_job_id(), new_job_id()
    await store.save(neighbour, "keep.bin", b"k" * BIG, "application/octet-stream")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", KILLED_SAVE, str(settings.mongodb_url),
        settings.mongodb_database, job, cwd=ROOT, stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 120)
        assert line == b"stalled\n", line
    finally:
        proc.kill()
        await proc.wait()
    assert await store.files.count_documents({"metadata.job_id": job}) == 0
    assert await store.chunks.count_documents({}) >= 3 + 150  # 48 MB in 255 KiB chunks

    assert await store.delete_for_jobs([job]) == 0  # no files record to count
    assert await store.chunks.count_documents({}) == 3  # the neighbour's
    assert await read(store, neighbour, "keep.bin") == b"k" * BIG


async def test_chunks_left_without_their_record_go_with_a_deleted_job(
        api: httpx.AsyncClient, stores: Stores, make_worker: Any) -> None:
    store = stores.artifacts
    job = await submit(api, "echo", {"text": "x"})
    await make_worker().run(burst=True)
    await wait_finished(stores.jobs, [job], 30)
    await store.save(job, "report.csv", b"r" * BIG, "text/csv")
    await lose_files_record(store, job, "report.csv")
    assert await store.chunks.count_documents({}) == 3

    r = await api.delete(f"/jobs/{job}")
    assert r.status_code == 204, r.text
    assert await store.chunks.count_documents({}) == 0


async def test_save_open_replace_and_delete(stores: Stores) -> None:
    store = stores.artifacts
    job = new_job_id()
    small = await store.save(job, "a.txt", b"hello", "text/plain")
    assert (small.name, small.size, small.content_type) == ("a.txt", 5, "text/plain")
    streamed = await store.save(job, "b.bin", io.BytesIO(b"b" * (2 * MIB + 7)),
                                "application/octet-stream")
    assert streamed.size == 2 * MIB + 7
    assert await read(store, job, "a.txt") == b"hello"
    assert await read(store, job, "b.bin") == b"b" * (2 * MIB + 7)
    assert await read(store, job, "missing") is None
    grid_out = await store.open(job, "b.bin")
    assert grid_out is not None and grid_out.length == 2 * MIB + 7
    assert str(grid_out._id).startswith(f"{job}/")

    # a rerun saving the same name replaces the file, chunks and all
    await store.save(job, "b.bin", b"again", "application/octet-stream")
    assert await read(store, job, "b.bin") == b"again"
    assert await store.files.count_documents({"metadata.job_id": job}) == 2
    assert await chunks_of(store, job) == 2

    assert await store.delete(job, "a.txt") == 1
    assert await read(store, job, "a.txt") is None
    assert await chunks_of(store, job) == 1
    assert await store.delete_for_jobs([job]) == 1
    assert await store.files.count_documents({}) == 0
    assert await store.chunks.count_documents({}) == 0
    assert await store.delete_for_jobs([]) == 0


async def test_only_the_named_jobs_lose_their_files(stores: Stores) -> None:
    store = stores.artifacts
    # ids one of which starts with another: their ranges must not overlap
    base = new_job_id()
    prefix, jobs = base[:-1], [base, base + "0", base + "a"]
    for job in [prefix, *jobs]:
        await store.save(job, "f.bin", job.encode() * 1000, "application/octet-stream")
    assert await store.delete_for_jobs([prefix]) == 1
    assert await read(store, prefix, "f.bin") is None
    assert await store.delete_for_jobs([base]) == 1
    assert await read(store, base, "f.bin") is None
    for job in jobs[1:]:
        assert await read(store, job, "f.bin") == job.encode() * 1000
        assert await chunks_of(store, job) == 1
    assert await store.chunks.count_documents({}) == 2


async def test_files_stored_with_objectid_ids_are_read_and_deleted(stores: Stores) -> None:
    store = stores.artifacts
    job, other = new_job_id(), new_job_id()

    async def old_save(job_id: str, name: str, data: bytes) -> Any:
        """A file as earlier versions stored it (an ObjectId id)."""
        return await store.bucket.upload_from_stream(f"{job_id}/{name}", data, metadata={
            "job_id": job_id, "name": name, "content_type": "text/plain"})

    old = await old_save(job, "old.txt", b"o" * BIG)
    replaced = await old_save(job, "again.txt", b"a" * BIG)
    kept = await old_save(other, "old.txt", b"x" * BIG)
    assert isinstance(old, ObjectId)
    await store.save(job, "new.txt", b"n" * BIG, "text/plain")
    assert await read(store, job, "old.txt") == b"o" * BIG

    await store.save(job, "again.txt", b"fresh", "text/plain")  # replaces the old one
    assert await store.chunks.count_documents({"files_id": replaced}) == 0
    assert await read(store, job, "again.txt") == b"fresh"

    assert await store.delete_for_jobs([job]) == 3
    assert await store.files.count_documents({"metadata.job_id": job}) == 0
    assert await store.chunks.count_documents({"files_id": {"$in": [old, replaced]}}) == 0
    assert await chunks_of(store, job) == 0
    assert await store.chunks.count_documents({"files_id": kept}) == 3
    assert await read(store, other, "old.txt") == b"x" * BIG
