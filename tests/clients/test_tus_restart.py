"""A server killed (SIGKILL) in the middle of a tus PATCH, restarted on the same data dir: the
segments committed before the kill are still there, and tuspy resumes after them, through the
write lease the dead process left (423 until it lapses), to a byte-identical file."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
from tusclient import client as tus_client

from tests.clients.test_tus_clients import _data, _downloaded
from tests.integration.test_server import AUTH, MiB, start_server

SEGMENT = 64 * MiB  # adapters/disk_parts.py's DISK_SEGMENT_BYTES
SIZE = SEGMENT + 16 * MiB
LOCK_SECONDS = 2  # FWB_TUS_LOCK_SECONDS: the dead writer's lease lapses this soon
TUS = {"tus-resumable": "1.0.0"}


class _Body:
    """A PATCH body that stops (and waits for the kill) once the server has committed its first
    segment: a second segment's file under blobs/.tus/<upload>/ means the first one is in."""

    def __init__(self, data: bytes, folder: Path) -> None:
        self._data = data
        self._folder = folder
        self.sent = 0
        self.committed = threading.Event()
        self.killed = threading.Event()

    def _second_segment_started(self) -> bool:
        return any(path.name.startswith(f"{SEGMENT:020d}-") for path in self._folder.glob("*"))

    def __iter__(self) -> Iterator[bytes]:
        piece = 256 * 1024
        while self.sent < len(self._data) - MiB:  # never the last bytes: no file is made
            if self.sent >= SEGMENT and self._second_segment_started():
                break
            yield self._data[self.sent : self.sent + piece]
            self.sent += piece
        self.committed.set()
        self.killed.wait(30)


def _patch(url: str, body: _Body, errors: list[BaseException]) -> None:
    headers = {
        **AUTH,
        **TUS,
        "upload-offset": "0",
        "content-type": "application/offset+octet-stream",
    }
    try:
        httpx.patch(url, headers=headers, content=iter(body), timeout=60)
    except httpx.HTTPError:
        pass  # the server died under it: expected
    except BaseException as error:  # reported by the test, not lost in the thread
        errors.append(error)


def test_tuspy_resumes_after_the_server_is_killed_mid_patch(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    env = {"FWB_TUS_LOCK_SECONDS": str(LOCK_SECONDS)}
    data = _data(SIZE, seed=b"restart")
    path = tmp_path / "restart.bin"
    path.write_bytes(data)

    server = start_server(data_dir, env=env, log_name="killed.log")
    body: _Body | None = None
    try:
        metadata = base64.b64encode(path.name.encode()).decode()
        created = httpx.post(
            f"{server.url}/tus",
            headers={
                **AUTH,
                **TUS,
                "upload-length": str(SIZE),
                "upload-metadata": f"filename {metadata}",
            },
        )
        assert created.status_code == 201, created.text
        upload_path = httpx.URL(created.headers["location"]).path
        upload_id = upload_path.rsplit("/", 1)[1]
        body = _Body(data, data_dir / "blobs" / ".tus" / upload_id)
        errors: list[BaseException] = []
        sender = threading.Thread(target=_patch, args=(server.url + upload_path, body, errors))
        sender.start()
        assert body.committed.wait(60), "the server never stored its first segment"
        server.kill()
    finally:
        if server.process.poll() is None:
            server.kill()
        if body is not None:
            body.killed.set()
    sender.join(timeout=30)
    assert not sender.is_alive() and not errors, errors
    assert body.sent > SEGMENT

    server = start_server(data_dir, env=env, log_name="restarted.log")
    try:
        url = server.url + upload_path  # the new server's port
        client = tus_client.TusClient(f"{server.url}/tus", headers=dict(AUTH))
        # Its HEAD may come while the dead writer's lease holds (it waits for it, up to the
        # lease); a PATCH then gets 423, retried a second later.
        uploader = client.uploader(file_path=str(path), url=url, retries=5, retry_delay=1)
        resumed_at = uploader.offset
        uploader.upload()
        file_id: str = uploader.request.response_headers["file-id"]
        assert _downloaded(server, file_id) == data
        record = httpx.get(f"{server.url}/files/{file_id}", headers=AUTH).json()
        assert (record["filename"], record["size"]) == (path.name, SIZE)
        # What the dead process had committed survived: whole segments, no more than it got.
        assert 0 < resumed_at <= body.sent
        assert resumed_at % SEGMENT == 0, resumed_at
        assert list((data_dir / "blobs" / ".tus").rglob("*")) == []
    finally:
        server.stop()
