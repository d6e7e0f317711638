"""The BlobStore contract, run against the fake, the disk adapter and S3 on a real server
(SeaweedFS); then details of disk and of S3."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from filewallball.adapters.disk import DiskBlobStore
from filewallball.adapters.s3 import S3BlobStore, S3Location
from filewallball.domain.errors import DependencyUnavailable, FileTooLarge, StorageFull
from filewallball.domain.models import Sha256
from filewallball.domain.ports import BlobStore
from tests.conftest import S3_BUCKET, staged_files
from tests.fakes import FakeBlobStore, stream
from tests.s3_server import SeaweedS3

MiB = 1024 * 1024


def sha_of(data: bytes) -> Sha256:
    return Sha256(hashlib.sha256(data).hexdigest())


def pattern(size: int) -> bytes:
    """Bytes that differ at every offset modulo 251, so a misplaced range shows."""
    return bytes(i % 251 for i in range(size))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "blobs"


def s3_store(server: SeaweedS3, prefix: str, **options: int) -> S3BlobStore:
    location = S3Location(bucket=S3_BUCKET, endpoint_url=server.endpoint, prefix=prefix)
    return S3BlobStore(location, **options)


@pytest.fixture(params=["fake", "disk", "s3"])
async def store(request: pytest.FixtureRequest, root: Path) -> AsyncIterator[BlobStore]:
    if request.param == "fake":
        yield FakeBlobStore()
    elif request.param == "disk":
        yield DiskBlobStore(root)
    else:
        # The smallest parts S3 allows, so that a few MiB take the multipart path.
        s3 = s3_store(
            request.getfixturevalue("s3_server"),
            request.getfixturevalue("s3_prefix"),
            part_size=5 * MiB,
        )
        yield s3
        await s3.aclose()


@pytest.fixture
def leftovers(
    store: BlobStore, root: Path, request: pytest.FixtureRequest
) -> Callable[[], list[object]]:
    """Whatever the store still holds for staged, unpublished blobs."""

    def held() -> list[object]:
        if isinstance(store, FakeBlobStore):
            return list(store.staged)
        if isinstance(store, S3BlobStore):
            server: SeaweedS3 = request.getfixturevalue("s3_server")
            prefix = store.location.prefix + "tmp/"
            return [*server.keys(prefix), *server.multipart_uploads(prefix)]
        return list(staged_files(root / ".tmp"))

    return held


async def put(store: BlobStore, data: bytes, chunk_size: int = 1000) -> Sha256:
    staged = await store.stage(stream(data, chunk_size))
    sha = sha_of(data)
    await staged.publish(sha)
    await staged.discard()
    return sha


async def read(store: BlobStore, sha: Sha256, start: int = 0, length: int | None = None) -> bytes:
    reader = await store.open(sha)
    assert reader is not None
    try:
        wanted = reader.size if length is None else length
        return b"".join([chunk async for chunk in reader.chunks(start, wanted)])
    finally:
        await reader.close()


@pytest.mark.parametrize(
    ("size", "chunk_size"),
    [
        (0, 1),
        (1, 1),
        (1000, 7),
        (20_000, 1),
        (MiB, MiB),
        (3 * MiB + 17, 64 * 1024),
        (3 * MiB + 17, 4 * MiB),
    ],
)
async def test_round_trip(
    store: BlobStore, leftovers: Callable[[], list[object]], size: int, chunk_size: int
) -> None:
    data = pattern(size)
    staged = await store.stage(stream(data, chunk_size))
    assert staged.size == size
    sha = sha_of(data)
    await staged.publish(sha)
    assert await store.exists(sha)
    reader = await store.open(sha)
    assert reader is not None
    assert reader.size == size
    await reader.close()
    assert await read(store, sha) == data
    assert leftovers() == []


@pytest.mark.parametrize(
    ("start", "length"),
    [
        (0, 0),
        (0, 1),
        (0, 600_000),
        (0, 700_000),
        (599_999, 1),
        (599_999, 10),
        (600_000, 10),
        (700_000, 10),
        (256 * 1024 - 1, 2),
        (100, 300_000),
    ],
)
async def test_ranged_reads(store: BlobStore, start: int, length: int) -> None:
    data = pattern(600_000)
    sha = await put(store, data)
    assert await read(store, sha, start, length) == data[start : start + length]


async def test_discard_leaves_nothing(
    store: BlobStore, leftovers: Callable[[], list[object]]
) -> None:
    data = b"never published"
    staged = await store.stage(stream(data))
    await staged.discard()
    await staged.discard()
    assert await store.open(sha_of(data)) is None
    assert not await store.exists(sha_of(data))
    assert leftovers() == []


async def test_discard_after_publish_keeps_the_blob(store: BlobStore) -> None:
    data = b"published"
    staged = await store.stage(stream(data))
    await staged.publish(sha_of(data))
    await staged.discard()
    assert await read(store, sha_of(data)) == data


class Boom(Exception):
    pass


@pytest.mark.parametrize(
    "error", [Boom("mid-way"), FileTooLarge(10), ConnectionResetError("client went away")]
)
async def test_failing_chunks_leave_nothing_and_pass_through(
    store: BlobStore, leftovers: Callable[[], list[object]], error: Exception
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        # More than one write buffer first, so bytes have reached the temp file.
        for _ in range(3):
            yield pattern(MiB)
        raise error

    with pytest.raises(type(error)) as raised:
        await store.stage(chunks())
    assert raised.value is error
    assert leftovers() == []


async def test_a_cancelled_upload_leaves_nothing(
    store: BlobStore, leftovers: Callable[[], list[object]]
) -> None:
    stalled = asyncio.Event()

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield pattern(MiB)
        stalled.set()
        await asyncio.Event().wait()  # a client that stops sending
        yield b"never"

    task = asyncio.create_task(store.stage(chunks()))
    await stalled.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert leftovers() == []


async def test_missing_and_deleted_blobs(store: BlobStore) -> None:
    missing = sha_of(b"nobody stored this")
    assert await store.open(missing) is None
    await store.delete(missing)

    sha = await put(store, b"short-lived")
    await store.delete(sha)
    assert await store.open(sha) is None
    assert not await store.exists(sha)


async def test_an_open_reader_outlives_delete(store: BlobStore) -> None:
    """On disk an open descriptor keeps the bytes; S3 has no open handles, so there a read
    after the delete says the blob is gone, and never yields other bytes."""
    data = pattern(MiB + 3)
    sha = await put(store, data)
    reader = await store.open(sha)
    assert reader is not None
    await store.delete(sha)
    try:
        if isinstance(store, S3BlobStore):
            with pytest.raises(DependencyUnavailable, match="deleted while it was read"):
                _ = [chunk async for chunk in reader.chunks(0, reader.size)]
        else:
            assert b"".join([chunk async for chunk in reader.chunks(0, reader.size)]) == data
    finally:
        await reader.close()


async def test_same_content_published_twice(
    store: BlobStore, leftovers: Callable[[], list[object]]
) -> None:
    data = b"twice the same bytes"
    first = await store.stage(stream(data, 3))
    second = await store.stage(stream(data, 5))
    await first.publish(sha_of(data))
    await second.publish(sha_of(data))
    await first.discard()
    await second.discard()
    assert await read(store, sha_of(data)) == data
    assert leftovers() == []


# Disk only.


@pytest.fixture
def disk(root: Path) -> DiskBlobStore:
    return DiskBlobStore(root)


async def test_disk_layout_temp_then_fan_out(disk: DiskBlobStore, root: Path) -> None:
    data = b"where do the bytes go?"
    sha = sha_of(data)
    staged = await disk.stage(stream(data, 4))
    [temp] = staged_files(root / ".tmp")
    assert temp.read_bytes() == data

    await staged.publish(sha)
    assert staged_files(root / ".tmp") == []
    assert (root / sha[:2] / sha[2:4] / sha).read_bytes() == data
    # Publishing again under the same hash (a retried transaction) changes nothing.
    await staged.publish(sha)


async def test_disk_short_writes_are_completed(
    disk: DiskBlobStore, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel may write less than asked: the rest goes after, in order, nothing twice."""
    writev = os.writev

    def short_writev(fd: int, buffers: list[memoryview]) -> int:
        return writev(fd, [bytes(buffers[0][:1000])])

    monkeypatch.setattr(os, "writev", short_writev)
    data = pattern(3 * MiB + 12345)
    staged = await disk.stage(stream(data, 64 * 1024 + 7))
    monkeypatch.undo()
    await staged.publish(sha_of(data))
    assert staged.size == len(data)
    sha = sha_of(data)
    assert (root / sha[:2] / sha[2:4] / sha).read_bytes() == data


async def test_disk_recreates_a_missing_temp_folder(disk: DiskBlobStore, root: Path) -> None:
    data = b"the temp folder went away"
    await (await disk.stage(stream(data))).discard()
    shutil.rmtree(root / ".tmp")
    staged = await disk.stage(stream(data))
    await staged.publish(sha_of(data))
    assert await disk.exists(sha_of(data))


async def test_disk_sweep_removes_only_old_temp_files(disk: DiskBlobStore, root: Path) -> None:
    assert await disk.sweep(older_than_seconds=60) == 0  # no .tmp folder yet
    old = await disk.stage(stream(b"abandoned by a crash"))
    [old_path] = staged_files(root / ".tmp")
    hours_ago = time.time() - 7200
    os.utime(old_path, (hours_ago, hours_ago))
    fresh = await disk.stage(stream(b"still uploading"))

    assert await disk.sweep(older_than_seconds=3600) == 1
    assert not old_path.exists()
    assert len(staged_files(root / ".tmp")) == 1
    await fresh.publish(sha_of(b"still uploading"))
    assert await read(disk, sha_of(b"still uploading")) == b"still uploading"
    await old.discard()  # its file is already gone: still fine


async def test_disk_check_writable(disk: DiskBlobStore, root: Path) -> None:
    await disk.check_writable()
    assert list((root / ".tmp").iterdir()) == []


@pytest.fixture
def blocked_root(root: Path) -> Path:
    """A root whose temp folder cannot be made: a file is in its place.

    Tests run as root, which chmod cannot stop; a file where the folder should be can.
    """
    root.mkdir()
    (root / ".tmp").write_bytes(b"in the way")
    return root


async def test_disk_unwritable_is_unavailable(blocked_root: Path) -> None:
    disk = DiskBlobStore(blocked_root)
    with pytest.raises(DependencyUnavailable):
        await disk.check_writable()
    with pytest.raises(DependencyUnavailable):
        await disk.stage(stream(b"data"))


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
async def test_disk_full_is_storage_full(
    disk: DiskBlobStore, root: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    def full(fd: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StorageFull):
        await disk.stage(stream(b"no room for this"))
    monkeypatch.undo()
    assert staged_files(root / ".tmp") == []


async def test_disk_refuses_paths_that_are_not_hashes(disk: DiskBlobStore) -> None:
    for bad in ["../../etc/passwd", "A" * 64, ""]:
        with pytest.raises(ValueError, match="SHA-256"):
            await disk.open(bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="SHA-256"):
            await disk.delete(bad)  # type: ignore[arg-type]


_STAGER = """
import sys, time
from pathlib import Path
from filewallball.adapters.disk import DiskBlobStore
from filewallball.adapters.s3 import S3BlobStore, S3Location

store = DiskBlobStore(Path(sys.argv[1]))
folder = store._staging.folder()
(folder / "half-an-upload").write_bytes(b"x" * 1000)
print("ready", flush=True)
time.sleep(600)
"""


def _stager(root: Path) -> subprocess.Popen[str]:
    """Another process (a worker, a replica on the volume) with an upload half written."""
    process = subprocess.Popen(
        [sys.executable, "-c", _STAGER, str(root)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    return process


async def test_disk_sweep_removes_what_dead_processes_staged_at_once(
    disk: DiskBlobStore, root: Path
) -> None:
    """A process killed mid-upload: its temp files go at the next sweep, not an hour later;
    a live process's stay (its lock is held), and so do ours."""
    dead, alive = _stager(root), _stager(root)
    try:
        dead.kill()
        dead.wait()
        mine = await disk.stage(stream(b"ours, in progress"))
        assert len(staged_files(root / ".tmp")) == 3
        assert await disk.sweep(older_than_seconds=3600) == 1
        remaining = staged_files(root / ".tmp")
        assert len(remaining) == 2
        assert all(
            str(alive.pid) in path.parent.name or path.parent == disk._staging.current
            for path in remaining
        )
        await mine.publish(sha_of(b"ours, in progress"))
    finally:
        alive.kill()
        alive.wait()
    assert await disk.sweep(older_than_seconds=3600) == 1  # now that one died too
    assert staged_files(root / ".tmp") == []


# S3 only (the real SeaweedFS server of tests/s3_server.py).


@pytest.fixture
async def s3(s3_server: SeaweedS3, s3_prefix: str) -> AsyncIterator[S3BlobStore]:
    store = s3_store(s3_server, s3_prefix, part_size=5 * MiB)
    yield store
    await store.aclose()


async def test_s3_layout_temp_then_blobs(s3: S3BlobStore, s3_server: SeaweedS3) -> None:
    prefix = s3.location.prefix
    small, large = b"where do the bytes go?", pattern(11 * MiB + 5)
    staged_small = await s3.stage(stream(small, 4))
    staged_large = await s3.stage(stream(large, 64 * 1024))
    # Both complete objects under tmp/, nothing under blobs/, no multipart upload left open.
    assert len(s3_server.keys(prefix + "tmp/")) == 2
    assert s3_server.keys(prefix + "blobs/") == []
    assert s3_server.multipart_uploads(prefix) == []

    await staged_small.publish(sha_of(small))
    await staged_large.publish(sha_of(large))
    assert s3_server.keys(prefix) == sorted(
        [f"{prefix}blobs/{sha_of(small)}", f"{prefix}blobs/{sha_of(large)}"]
    )
    assert await read(s3, sha_of(large)) == large
    await staged_small.publish(sha_of(small))  # a retried transaction: no-op


async def test_s3_same_content_is_stored_once(s3: S3BlobStore, s3_server: SeaweedS3) -> None:
    data = pattern(6 * MiB)
    for chunk_size in (MiB, 7 * 1000):
        staged = await s3.stage(stream(data, chunk_size))
        await staged.publish(sha_of(data))
        await staged.discard()
    assert s3_server.keys(s3.location.prefix) == [f"{s3.location.prefix}blobs/{sha_of(data)}"]


async def test_s3_large_blobs_are_published_in_copied_parts(
    s3: S3BlobStore, s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over PART_COPY_ABOVE (5 GiB at most, CopyObject's limit) the copy goes in parts."""
    import filewallball.adapters.s3 as s3_module

    monkeypatch.setattr(s3_module, "PART_COPY_ABOVE", 6 * MiB)
    monkeypatch.setattr(s3_module, "COPY_PART_BYTES", 5 * MiB)
    data = pattern(17 * MiB + 1)
    sha = await put(s3, data, chunk_size=MiB)
    assert await read(s3, sha) == data
    assert await read(s3, sha, 5 * MiB - 3, 10) == data[5 * MiB - 3 : 5 * MiB + 7]
    assert s3_server.keys(s3.location.prefix) == [f"{s3.location.prefix}blobs/{sha}"]
    assert s3_server.multipart_uploads(s3.location.prefix) == []


async def test_s3_part_size_grows_for_the_largest_upload(s3_server: SeaweedS3) -> None:
    """10,000 parts must hold FWB_MAX_UPLOAD_BYTES; smaller than S3's 5 MiB is refused."""
    store = s3_store(s3_server, "x/", part_size=8 * MiB, max_object_bytes=200 * 1024**3)
    assert store.part_size * 10_000 >= 200 * 1024**3
    with pytest.raises(ValueError, match="at least"):
        s3_store(s3_server, "x/", part_size=MiB)


async def test_s3_sweep_aborts_stale_uploads_and_keeps_live_ones(
    s3: S3BlobStore, s3_server: SeaweedS3
) -> None:
    """What a killed process left in tmp/ (an object, an open multipart upload) goes once
    untouched for the age given; an upload that just sent a part stays."""
    prefix = s3.location.prefix
    client = s3_server.client()
    client.put_object(Bucket=S3_BUCKET, Key=f"{prefix}tmp/dead-object", Body=b"half")
    started = client.create_multipart_upload(Bucket=S3_BUCKET, Key=f"{prefix}tmp/dead-upload")
    client.upload_part(
        Bucket=S3_BUCKET,
        Key=f"{prefix}tmp/dead-upload",
        UploadId=started["UploadId"],
        PartNumber=1,
        Body=pattern(5 * MiB),
    )
    kept = await put(s3, b"published, never swept")

    assert await s3.sweep(older_than_seconds=3600) == 0
    assert s3_server.multipart_uploads(prefix) == [f"{prefix}tmp/dead-upload"]
    await asyncio.sleep(1.1)  # S3 times have one-second resolution
    assert await s3.sweep(older_than_seconds=1) == 2
    assert s3_server.keys(prefix) == [f"{prefix}blobs/{kept}"]
    assert s3_server.multipart_uploads(prefix) == []


async def test_s3_a_read_of_a_missing_blob_is_none(s3: S3BlobStore) -> None:
    assert await s3.open(sha_of(b"never stored")) is None
    assert not await s3.exists(sha_of(b"never stored"))


async def test_s3_presigned_download(s3_server: SeaweedS3, s3_prefix: str) -> None:
    store = S3BlobStore(
        S3Location(bucket=S3_BUCKET, endpoint_url=s3_server.endpoint, prefix=s3_prefix),
        presign_expires_seconds=60,
    )
    try:
        data = pattern(300_000)
        sha = await put(store, data)
        url = await store.download_url(
            sha, content_type="text/plain", content_disposition='attachment; filename="a.txt"'
        )
        assert url is not None and "X-Amz-Signature" in url and "X-Amz-Expires=60" in url
        async with httpx.AsyncClient() as http:
            response = await http.get(url)
            assert response.status_code == 200
            assert response.content == data
            assert response.headers["Content-Disposition"] == 'attachment; filename="a.txt"'
            assert response.headers["Content-Type"] == "text/plain"
            # Another blob, or a longer life, under the same signature: refused.
            for tampered in (url.replace(sha, sha_of(b"x")), url.replace("=60", "=61")):
                assert (await http.get(tampered)).status_code == 403
    finally:
        await store.aclose()
    # Off (the default), and on disk: no URL, downloads stream through the server.
    for unsigned in (s3_store(s3_server, s3_prefix), DiskBlobStore(Path("/nonexistent"))):
        assert await unsigned.download_url(sha, content_type="a/b", content_disposition="x") is None


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_s3_unreachable_is_unavailable_and_stores_nothing(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    store = S3BlobStore(S3Location(bucket=S3_BUCKET, endpoint_url=endpoint, prefix="gone/"))
    try:
        for attempt in (
            store.check_writable(),
            store.stage(stream(pattern(6 * MiB), MiB)),
            store.open(sha_of(b"x")),
            store.check_bucket(),
        ):
            with pytest.raises(DependencyUnavailable) as raised:
                await attempt
            assert f"S3 bucket '{S3_BUCKET}' at {endpoint}" in raised.value.diagnosis
    finally:
        await store.aclose()


async def test_s3_missing_bucket_and_refused_credentials(
    s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = S3BlobStore(
        S3Location(bucket="no-such-bucket-here", endpoint_url=s3_server.endpoint, prefix="p/")
    )
    try:
        for check in (missing.check_bucket, missing.check_writable):
            with pytest.raises(DependencyUnavailable, match="unavailable") as raised:
                await check()
            assert "the bucket does not exist" in raised.value.diagnosis
        # No write was tried: SeaweedFS makes a missing bucket at the first PUT of an admin.
        buckets = s3_server.client().list_buckets()["Buckets"]
        assert "no-such-bucket-here" not in {bucket["Name"] for bucket in buckets}
    finally:
        await missing.aclose()

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    refused = s3_store(s3_server, "refused/")
    try:
        with pytest.raises(DependencyUnavailable) as raised:
            await refused.check_writable()
        assert "refused" in raised.value.diagnosis
    finally:
        await refused.aclose()
    monkeypatch.undo()
    assert s3_server.keys("refused/") == []


@pytest.mark.parametrize("how", ["error", "cancel"])
async def test_s3_a_failed_multipart_upload_is_aborted(
    s3: S3BlobStore, s3_server: SeaweedS3, how: str
) -> None:
    """Parts already sent (two of 5 MiB, a third in flight): the multipart upload is aborted,
    so the store keeps none of them, and the caller's error comes through unchanged."""
    sent, proceed = asyncio.Event(), asyncio.Event()

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(12):
            yield pattern(MiB)
        sent.set()
        await proceed.wait()
        if how == "error":
            raise Boom("the client went away")
        await asyncio.Event().wait()
        yield b"never"

    task = asyncio.create_task(s3.stage(chunks()))
    await sent.wait()
    await asyncio.sleep(0.2)  # parts are in flight
    assert len(s3_server.multipart_uploads(s3.location.prefix)) == 1
    proceed.set()
    await asyncio.sleep(0)
    if how == "cancel":
        task.cancel()
    with pytest.raises(Boom if how == "error" else asyncio.CancelledError):
        await task
    assert s3_server.multipart_uploads(s3.location.prefix) == []
    assert s3_server.keys(s3.location.prefix) == []


async def test_s3_a_download_takes_one_request_once_the_size_is_known(
    s3: S3BlobStore, s3_server: SeaweedS3, s3_prefix: str
) -> None:
    """Stored objects never change, so their sizes are kept: the second open sends no HEAD.
    A blob another replica deleted is noticed by the GET, and forgotten."""
    calls: list[str] = []
    client = await s3.connection.get()
    client.meta.events.register("before-call.s3.*", lambda model, **_: calls.append(model.name))
    data = pattern(100_000)
    sha = await put(s3, data)
    calls.clear()
    assert await read(s3, sha) == data
    assert await read(s3, sha, 10, 20) == data[10:30]
    assert calls == ["HeadObject", "GetObject", "GetObject"]

    other_replica = s3_store(s3_server, s3_prefix)
    await other_replica.delete(sha)
    await other_replica.aclose()
    reader = await s3.open(sha)
    assert reader is not None  # still known here
    with pytest.raises(DependencyUnavailable, match="deleted while it was read"):
        _ = [chunk async for chunk in reader.chunks(0, reader.size)]
    assert await s3.open(sha) is None
