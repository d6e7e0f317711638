"""A 2 GiB resumable upload through a real `filewallball serve` (disk, SQLite) in flat memory:
its segments stream to disk, and the completing PATCH streams all of them through the upload
pipeline, so the server's RSS must not grow with the file, a PATCH, or a 64 MiB segment."""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.test_server import AUTH, MiB, Server, start_server

GiB = 1024 * MiB
SIZE = 2 * GiB
PATCH_BYTES = 512 * MiB  # four PATCHes, each eight of the disk store's 64 MiB segments
# A buffered segment would grow RSS by 64 MiB, a buffered PATCH by 512 MiB, the file by 2 GiB.
# What the stream itself holds (64 KiB reads, the hasher, the sniffer's head, socket buffers)
# is a few MiB; allocator noise and the first request's imports take the rest of the margin.
RSS_GROWTH_BOUND = 48 * MiB


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    started = start_server(
        tmp_path_factory.mktemp("tus-memory"), env={"FWB_MAX_UPLOAD_BYTES": str(3 * GiB)}
    )
    yield started
    started.stop()


class Generated:
    """SIZE bytes made a MiB at a time (each MiB different), hashed as they are made."""

    def __init__(self) -> None:
        self._block = hashlib.sha256(b"tus-memory").digest() * (MiB // 32)
        self._made = 0
        self.sha256 = hashlib.sha256()

    def chunks(self, size: int) -> Iterator[bytes]:
        for _ in range(size // MiB):
            chunk = self._made.to_bytes(8, "big") + self._block[8:]
            self._made += 1
            self.sha256.update(chunk)
            yield chunk


def test_a_2_gib_resumable_upload_keeps_server_memory_flat(server: Server) -> None:
    body = Generated()
    tus = {"Tus-Resumable": "1.0.0"}
    started = time.monotonic()
    with httpx.Client(base_url=server.url, timeout=120, headers=AUTH) as client:
        name = base64.b64encode(b"two.bin").decode()
        created = client.post(
            "/tus",
            headers={**tus, "Upload-Length": str(SIZE), "Upload-Metadata": f"filename {name}"},
        )
        assert created.status_code == 201, created.text
        location = created.headers["location"]
        with server.rss_growth() as growth:
            for offset in range(0, SIZE, PATCH_BYTES):
                response = client.patch(
                    location,
                    content=body.chunks(PATCH_BYTES),
                    headers={
                        **tus,
                        "Content-Type": "application/offset+octet-stream",
                        "Content-Length": str(PATCH_BYTES),
                        "Upload-Offset": str(offset),
                    },
                )
                assert response.status_code == 204, response.text
                assert response.headers["upload-offset"] == str(offset + PATCH_BYTES)
        seconds = time.monotonic() - started
        file_id = response.headers["file-id"]
        record = client.get(f"/files/{file_id}").json()
    print(f"2 GiB via tus in {seconds:.1f} s; RSS grew {growth() / MiB:.1f} MiB")
    assert record["size"] == SIZE
    assert record["sha256"] == body.sha256.hexdigest()
    assert growth() < RSS_GROWTH_BOUND, f"RSS grew by {growth() / MiB:.1f} MiB"
    assert not (server.data_dir / "blobs" / ".tus").exists() or not any(
        (server.data_dir / "blobs" / ".tus").iterdir()
    )
