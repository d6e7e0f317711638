"""tus across replicas (DESIGN.md §6): an upload begun on one `filewallball serve` continues and
completes on another, and of two PATCHes at one offset sent to two replicas at once exactly one
wins. On disk the replicas share PostgreSQL, Redis and the data folder; on S3 they share the
database, Redis and the bucket prefix, and nothing of an upload touches either's local disk.

The servers are started once per storage for the module (tests/integration/test_replicas.py
starts them); each test makes uploads of its own.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import os
import select
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import httpx
import pytest
from tusclient import client as tus_client

from tests.conftest import S3_BUCKET
from tests.integration.conftest import ADMIN_KEY
from tests.integration.test_replicas import (
    OpenFiles,
    files_under,
    local_folders,
    s3_env,
    s3_replicas_under,
    shared_env,
    two_replicas,
)
from tests.integration.test_server import AUTH, MiB, Server
from tests.s3_server import SeaweedS3

TUS = {"Tus-Resumable": "1.0.0"}
PATCH = {**TUS, "Content-Type": "application/offset+octet-stream"}


@contextmanager
def _database(pg_server: str) -> Iterator[str]:
    """A fresh PostgreSQL database for the module (tests/conftest.py's pg_url is per test)."""
    import asyncpg

    async def admin(statement: str) -> None:
        conn = await asyncpg.connect(pg_server, timeout=5)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    name = f"fwb_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        base = pg_server.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
        yield f"{base}/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextmanager
def _redis_prefix(redis_url: str) -> Iterator[str]:
    """A Redis key prefix for the module, its keys (and its job queue's) deleted afterwards."""
    import redis

    prefix = f"fwbtest:{uuid.uuid4().hex[:12]}:"
    try:
        yield prefix
    finally:
        client = redis.Redis.from_url(redis_url)
        queue = prefix.replace(":", "-")
        try:
            patterns = (f"{prefix}*", f"saq:{queue}*", f"saq:job:{queue}*")
            keys = [key for pattern in patterns for key in client.scan_iter(match=pattern)]
            if keys:
                client.delete(*keys)
        finally:
            client.close()


@dataclass
class Replicas:
    a: Server
    b: Server
    s3: SeaweedS3 | None = None  # the bucket's server, when the blobs are on S3
    prefix: str = ""  # FWB_S3_PREFIX

    def tus_keys(self, upload: str = "") -> list[str]:
        """The bucket's objects of resumable uploads (of one upload)."""
        assert self.s3 is not None
        return self.s3.keys(f"{self.prefix}tus/{upload}")


@pytest.fixture(scope="module", params=["disk", "s3"])
def replicas(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    pg_server: str,
    redis_server: str,
) -> Iterator[Replicas]:
    """Two replicas for the module's tests, on one storage."""
    root = tmp_path_factory.mktemp(f"tus-replicas-{request.param}")
    with ExitStack() as stack:
        url = stack.enter_context(_database(pg_server))
        prefix = stack.enter_context(_redis_prefix(redis_server))
        if request.param == "disk":
            env = {**shared_env(url, prefix), "FWB_MAX_UPLOAD_BYTES": str(64 * MiB)}
            a, b = stack.enter_context(two_replicas(root, env))
            yield Replicas(a, b)
            return
        s3: SeaweedS3 = request.getfixturevalue("s3_server")
        bucket_prefix = f"t-{uuid.uuid4().hex[:12]}/"
        settings = {
            "s3_bucket": S3_BUCKET,
            "s3_endpoint_url": s3.endpoint,
            "s3_prefix": bucket_prefix,
        }
        a, b = stack.enter_context(s3_replicas_under(root, s3_env(url, prefix, settings)))
        yield Replicas(a, b, s3, bucket_prefix)


@contextmanager
def _nothing_local(replicas: Replicas) -> Iterator[None]:
    """On S3: no process of either replica opens a file in its data folder or TMPDIR, and
    both stay empty; on disk: nothing to check."""
    if replicas.s3 is None:
        yield
        return
    servers = [replicas.a, replicas.b]
    folders = local_folders(servers)
    with OpenFiles(servers, folders) as opened:
        yield
    assert opened.seen == set()
    for folder in folders:
        assert files_under(folder) == [], folder


def _data(size: int) -> bytes:
    block = hashlib.sha256(os.urandom(8)).digest() * (MiB // 32)
    return (block * (size // MiB + 1))[:size]


def _create(server: Server, length: int, filename: str) -> str:
    name = base64.b64encode(filename.encode()).decode()
    response = httpx.post(
        f"{server.url}/tus",
        headers={
            **AUTH,
            **TUS,
            "Upload-Length": str(length),
            "Upload-Metadata": f"filename {name}",
        },
    )
    assert response.status_code == 201, response.text
    upload_id = response.headers["location"].rsplit("/", 1)[1]
    return upload_id


def _patch(server: Server, upload_id: str, offset: int, data: bytes) -> httpx.Response:
    return httpx.patch(
        f"{server.url}/tus/{upload_id}",
        content=data,
        headers={**AUTH, **PATCH, "Upload-Offset": str(offset)},
        timeout=60,
    )


def _head(server: Server, upload_id: str) -> httpx.Response:
    response = httpx.head(f"{server.url}/tus/{upload_id}", headers={**AUTH, **TUS})
    assert response.status_code == 200, response.headers
    return response


def _downloaded(server: Server, file_id: str) -> bytes:
    response = httpx.get(f"{server.url}/download/{file_id}", headers=AUTH, timeout=60)
    assert response.status_code == 200
    return response.content


def test_an_upload_begun_on_one_replica_completes_on_the_other(replicas: Replicas) -> None:
    a, b = replicas.a, replicas.b
    # On S3 A's part is more than one 8 MiB segment, and B adds some.
    size, first = (10 * MiB + 321, 9 * MiB + 7) if replicas.s3 else (5 * MiB + 321, 2 * MiB + 7)
    data = _data(size)
    with _nothing_local(replicas):
        upload_id = _create(a, size, "across.bin")
        patched = _patch(a, upload_id, 0, data[:first])
        assert patched.status_code == 204, patched.text
        assert patched.headers["upload-offset"] == str(first)
        if replicas.s3:
            assert len(replicas.tus_keys(upload_id)) == 2  # A's bytes, in the bucket
        head = _head(b, upload_id)
        assert (head.headers["upload-offset"], head.headers["upload-length"]) == (
            str(first),
            str(size),
        )
        assert "file-id" not in head.headers

        # tuspy on B: it asks B where the upload is (HEAD) and sends the rest from there.
        uploader = tus_client.TusClient(f"{b.url}/tus", headers=dict(AUTH)).uploader(
            file_stream=io.BytesIO(data), url=f"{b.url}/tus/{upload_id}", chunk_size=2 * MiB
        )
        assert uploader.offset == first
        uploader.upload()
        file_id = uploader.request.response_headers["file-id"]

        assert _head(a, upload_id).headers["file-id"] == file_id  # A knows it is complete
        assert _downloaded(a, file_id) == data
        record = httpx.get(f"{a.url}/files/{file_id}", headers=AUTH).json()
        assert (record["filename"], record["size"]) == ("across.bin", size)
        assert record["sha256"] == hashlib.sha256(data).hexdigest()
        if replicas.s3:
            assert replicas.tus_keys(upload_id) == []  # the segments went with completion
        else:
            assert not (a.data_dir / "blobs" / ".tus" / upload_id).exists()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    sent: int  # body bytes sent before the answer came


def _slow_patch(
    server: Server, upload_id: str, offset: int, data: bytes, start: threading.Barrier
) -> Answer:
    """A PATCH whose body trickles in (64 KiB every 20 ms) over a raw socket, so that it is
    still being sent when the other replica's starts; it stops sending once answered."""
    head = (
        f"PATCH /tus/{upload_id} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {ADMIN_KEY}\r\nTus-Resumable: 1.0.0\r\n"
        f"Content-Type: application/offset+octet-stream\r\nUpload-Offset: {offset}\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        start.wait(timeout=10)
        sock.sendall(head)
        sent = 0
        answer = b""
        while sent < len(data):
            if select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(data[sent : sent + 64 * 1024])
            except OSError:
                break
            sent = min(sent + 64 * 1024, len(data))
            time.sleep(0.02)
        while b"\r\n\r\n" not in answer:
            more = sock.recv(65536)
            if not more:
                break
            answer += more
    status_line, *lines = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return Answer(int(status_line.split(" ")[1]), headers, sent)


def test_of_two_patches_at_one_offset_on_two_replicas_one_wins(replicas: Replicas) -> None:
    a, b = replicas.a, replicas.b
    head_size, race_size = MiB + 5, 2 * MiB  # 32 writes of 64 KiB: about 0.7 s each
    size = head_size + race_size
    start = _data(head_size)
    bodies = {"a": _data(race_size), "b": _data(race_size)}
    with _nothing_local(replicas):
        upload_id = _create(a, size, "race.bin")
        assert _patch(b, upload_id, 0, start).status_code == 204
        barrier = threading.Barrier(2)
        answers: dict[str, Answer] = {}

        def send(name: str, server: Server) -> None:
            answers[name] = _slow_patch(server, upload_id, head_size, bodies[name], barrier)

        threads = [
            threading.Thread(target=send, args=(name, server))
            for name, server in (("a", a), ("b", b))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)

        statuses = sorted(answer.status for answer in answers.values())
        assert statuses in ([204, 423], [204, 409]), answers
        winner = next(name for name, answer in answers.items() if answer.status == 204)
        loser = answers["b" if winner == "a" else "a"]
        if loser.status == 423:
            # Refused at once, while the winner was still sending: they overlapped.
            assert loser.sent < race_size, loser
        file_id = answers[winner].headers["file-id"]
        assert answers[winner].headers["upload-offset"] == str(size)
        for server in (a, b):
            head = _head(server, upload_id)
            assert (head.headers["upload-offset"], head.headers["file-id"]) == (str(size), file_id)
            assert _downloaded(server, file_id) == start + bodies[winner]
        if replicas.s3:
            assert replicas.tus_keys(upload_id) == []
