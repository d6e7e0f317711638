"""Caches are exact copies: each way a copy could miss an invalidation, replayed end to end.

Two replicas (two apps, each with its own near cache and Redis connections) on one PostgreSQL
and a Redis of the test's own, which the test freezes (SIGSTOP: unreachable, state kept, as a
network cut or a stalled server), thaws or restarts empty. And the embedded default on SQLite
with `serve --workers 2`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest
import redis

from filewallball.settings import Settings
from tests.conftest import unavailable
from tests.integration.conftest import ADMIN_KEY, GENEROUS, serve
from tests.integration.test_server import AUTH, start_server


class PrivateRedis:
    """A redis-server on a free loopback port, started, frozen, thawed and restarted at will."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.path.exists(binary):
            unavailable("redis-server is not installed (Debian: redis-server)")
        self._binary = binary
        self._workdir = workdir
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self._process = subprocess.Popen(
            [
                *(self._binary, "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(self._workdir)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
            finally:
                client.close()

    def freeze(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)
            self._process.kill()
            self._process.wait()
            self._process = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
async def two_replicas(
    tmp_path: Path, pg_url: str, private_redis: PrivateRedis
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    common = {
        "data_dir": tmp_path,
        "bootstrap_admin_key": ADMIN_KEY,
        **GENEROUS,
        "database_url": pg_url,
        "redis_url": private_redis.url,
        "redis_prefix": f"fwbtest:{uuid.uuid4().hex[:8]}:",
        "auto_migrate": True,
        "audit_flush_interval": 0,
    }
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(serve(Settings(**common)))
        second = await stack.enter_async_context(serve(Settings(**common)))
        yield first, second


async def _new_key(admin: httpx.AsyncClient) -> tuple[str, dict[str, str]]:
    created = (await admin.post("/admin/keys", json={"name": "ann", "role": "uploader"})).json()
    return created["id"], {"authorization": f"Bearer {created['key']}"}


async def _statuses(
    replicas: tuple[httpx.AsyncClient, ...], path: str, headers: dict[str, str], seconds: float
) -> list[int]:
    """The status of `path` on every replica, again and again for `seconds`."""
    statuses: list[int] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for replica in replicas:
            statuses.append((await replica.get(path, headers=headers)).status_code)
        await asyncio.sleep(0.05)
    return statuses


async def test_a_key_revoked_while_redis_is_unreachable_stays_revoked_after_it_returns(
    two_replicas: tuple[httpx.AsyncClient, httpx.AsyncClient], private_redis: PrivateRedis
) -> None:
    first, second = two_replicas
    key_id, ann = await _new_key(first)
    for replica in (first, second, first, second):  # cached in Redis and in both processes
        assert (await replica.get("/files", headers=ann)).status_code == 200
    private_redis.freeze()
    try:
        assert (await first.delete(f"/admin/keys/{key_id}")).status_code == 204
    finally:
        private_redis.thaw()
    assert set(await _statuses(two_replicas, "/files", ann, seconds=3)) == {401}


async def test_a_file_deleted_while_redis_is_unreachable_stays_deleted_after_it_returns(
    two_replicas: tuple[httpx.AsyncClient, httpx.AsyncClient], private_redis: PrivateRedis
) -> None:
    first, second = two_replicas
    created = (await first.post("/upload", files={"file": ("a.txt", b"secret")})).json()
    record, download = f"/files/{created['id']}", f"/download/{created['id']}"
    for replica in (first, second, first, second):
        assert (await replica.get(record)).status_code == 200
        assert (await replica.get(download)).status_code == 200
    private_redis.freeze()
    try:
        assert (await second.delete(record)).status_code == 204
    finally:
        private_redis.thaw()
    statuses = await _statuses(two_replicas, record, {}, seconds=2)
    statuses += await _statuses(two_replicas, download, {}, seconds=1)
    assert set(statuses) == {404}


async def test_a_redis_blip_right_before_a_revocation_does_not_keep_the_key(
    two_replicas: tuple[httpx.AsyncClient, httpx.AsyncClient], private_redis: PrivateRedis
) -> None:
    """A one-second blip trips the revoking replica's breaker; the revocation must still land."""
    first, second = two_replicas
    key_id, ann = await _new_key(first)
    for replica in (first, second, first, second):
        assert (await replica.get("/files", headers=ann)).status_code == 200
    private_redis.freeze()
    assert (await first.get("/files", headers=ann)).status_code == 200  # from the database
    await asyncio.sleep(1)
    private_redis.thaw()
    assert (await first.delete(f"/admin/keys/{key_id}")).status_code == 204
    assert set(await _statuses(two_replicas, "/files", ann, seconds=2)) == {401}


async def test_a_redis_restart_drops_every_copy_and_misses_no_delete(
    two_replicas: tuple[httpx.AsyncClient, httpx.AsyncClient], private_redis: PrivateRedis
) -> None:
    first, second = two_replicas
    kept = (await first.post("/upload", files={"file": ("k.txt", b"kept")})).json()
    gone = (await first.post("/upload", files={"file": ("g.txt", b"gone")})).json()
    for replica in (first, second, first, second):
        for created in (kept, gone):
            assert (await replica.get(f"/files/{created['id']}")).status_code == 200
    private_redis.kill()
    try:
        assert (await first.delete(f"/files/{gone['id']}")).status_code == 204
    finally:
        private_redis.start()
    assert set(await _statuses(two_replicas, f"/files/{gone['id']}", {}, seconds=2)) == {404}
    assert set(await _statuses(two_replicas, f"/files/{kept['id']}", {}, seconds=1)) == {200}


def test_two_embedded_workers_never_serve_a_file_the_other_deleted(tmp_path: Path) -> None:
    """SQLite and `serve --workers 2`: a copy in one worker could not see the other's delete."""
    server = start_server(tmp_path, ["--workers", "2"])
    try:
        with httpx.Client(base_url=server.url, headers=AUTH) as client:
            created = client.post("/upload", files={"file": ("a.txt", b"secret")}).json()
            path = f"/files/{created['id']}"
            for _ in range(40):  # new connections: both workers read (and would cache) it
                assert httpx.get(server.url + path, headers=AUTH).status_code == 200
            assert client.delete(path).status_code == 204
            statuses = [httpx.get(server.url + path, headers=AUTH).status_code for _ in range(80)]
            statuses += [
                httpx.get(server.url + f"/download/{created['id']}", headers=AUTH).status_code
                for _ in range(20)
            ]
        assert set(statuses) == {404}
    finally:
        server.stop()
