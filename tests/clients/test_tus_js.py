"""tus-js-client (npm, run by Node) against a real `filewallball serve`: it uploads in chunks,
resumes after its connection is cut mid-request, and sends the checksum extension's
Upload-Checksum (which tus-js-client 4 lacks: tusjs/upload.mjs adds it per PATCH), and the
server refuses a wrong one with 460, appending nothing.

Needs Node and `npm ci --no-audit --no-fund` in tests/clients/tusjs (.ci/run does it): skipped
without them, failed when FWB_REQUIRE_SERVICES=1."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.clients.test_tus_clients import _data, _downloaded
from tests.conftest import unavailable
from tests.integration.conftest import ADMIN_KEY
from tests.integration.test_server import AUTH, MiB, Server
from tests.tcp_proxy import TcpProxy

TUSJS_DIR = Path(__file__).with_name("tusjs")
SCRIPT = TUSJS_DIR / "upload.mjs"
TUS = {"tus-resumable": "1.0.0"}


@pytest.fixture(scope="session")  # before api_server: a skip starts no server
def node() -> str:
    """Node, once tus-js-client's pinned version is installed next to the script."""
    found = shutil.which("node")
    if found is None:
        unavailable("node is not on PATH (tus-js-client's tests need Node 18 or later)")
    assert found is not None
    version = subprocess.run(
        [found, "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    if int(version.lstrip("v").split(".")[0]) < 18:
        unavailable(f"node {version} is too old for tus-js-client 4 (needs 18 or later)")
    pinned = json.loads((TUSJS_DIR / "package.json").read_text())["dependencies"]["tus-js-client"]
    installed = TUSJS_DIR / "node_modules" / "tus-js-client" / "package.json"
    if not installed.exists() or json.loads(installed.read_text())["version"] != pinned:
        unavailable(
            f"tus-js-client {pinned} is not installed: run `npm ci --no-audit --no-fund`"
            f" in {TUSJS_DIR}"
        )
    return found


async def _tusjs(node: str, endpoint: str, path: Path, **options: object) -> dict[str, Any]:
    """tus-js-client's upload of `path` to `endpoint` (upload.mjs): what it saw."""
    process = await asyncio.create_subprocess_exec(
        node,
        str(SCRIPT),
        endpoint,
        ADMIN_KEY,
        str(path),
        json.dumps(options),
        cwd=TUSJS_DIR,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, stderr.decode()
    result: dict[str, Any] = json.loads(stdout.decode().strip().splitlines()[-1])
    return result


def _file(tmp_path: Path, name: str, size: int) -> tuple[Path, bytes]:
    data = _data(size, seed=os.urandom(8))
    path = tmp_path / name
    path.write_bytes(data)
    return path, data


def _succeeded(result: dict[str, Any]) -> str:
    assert result["success"], result["error"]
    file_id: str = result["fileId"]
    assert file_id, result["requests"][-1]
    return file_id


@pytest.mark.parametrize("checksum", [False, True], ids=["plain", "checksum"])
async def test_tus_js_uploads_in_chunks(
    node: str, api_server: Server, tmp_path: Path, checksum: bool
) -> None:
    path, data = _file(tmp_path, "chunks-js.bin", 5 * MiB + 123)
    result = await _tusjs(node, f"{api_server.url}/tus", path, chunkSize=MiB, checksum=checksum)
    file_id = _succeeded(result)
    patches = [r for r in result["requests"] if r["method"] == "PATCH"]
    assert [(r["offset"], r["status"]) for r in patches] == [(str(n * MiB), 204) for n in range(6)]
    assert result["checksums"] == (6 if checksum else 0)
    async with httpx.AsyncClient(headers=AUTH) as client:
        record = (await client.get(f"{api_server.url}/files/{file_id}")).json()
    assert (record["filename"], record["size"]) == ("chunks-js.bin", len(data))
    assert _downloaded(api_server, file_id) == data


@pytest.mark.parametrize("checksum", [False, True], ids=["plain", "checksum"])
async def test_tus_js_resumes_after_its_connection_is_cut(
    node: str, api_server: Server, tmp_path: Path, checksum: bool
) -> None:
    size, cut = 6 * MiB, 4 * MiB
    path, data = _file(tmp_path, "cut-js.bin", size)
    proxy = TcpProxy("127.0.0.1", api_server.port, cut_after=cut)
    await proxy.start()
    try:
        # One PATCH for the whole file without a checksum (what arrived before the cut is
        # kept); 1 MiB ones with it (the cut one is sent again whole).
        options: dict[str, object] = {"chunkSize": MiB, "checksum": True} if checksum else {}
        result = await _tusjs(
            node,
            f"http://127.0.0.1:{proxy.port}/tus",
            path,
            retryDelays=[0, 200, 500],
            **options,
        )
    finally:
        await proxy.stop()
    assert proxy.cuts == 1
    file_id = _succeeded(result)
    assert _downloaded(api_server, file_id) == data
    # It asked where to go on (HEAD), and went on from there, not from the start.
    methods = [r["method"] for r in result["requests"]]
    assert "HEAD" in methods, methods
    head, resumed = result["requests"][methods.index("HEAD") : methods.index("HEAD") + 2]
    assert resumed["method"] == "PATCH" and resumed["offset"] == head["responseOffset"], resumed
    assert int(resumed["offset"]) > 0, resumed
    assert result["checksums"] == (result["patches"] if checksum else 0)
    resent = proxy.sent - size
    assert resent < (MiB + 64 * 1024 if checksum else 256 * 1024), resent


async def test_tus_js_wrong_checksum_is_460_and_appends_nothing(
    node: str, api_server: Server, tmp_path: Path
) -> None:
    path, _ = _file(tmp_path, "wrong-js.bin", 3 * MiB)
    result = await _tusjs(
        node,
        f"{api_server.url}/tus",
        path,
        chunkSize=MiB,
        checksum=True,
        corruptChecksumAt=1,
        retryDelays=[0, 0],  # 460 is a client error: tus-js-client does not retry it
    )
    assert not result["success"]
    assert result["error"]["status"] == 460, result["error"]
    patches = [(r["offset"], r["status"]) for r in result["requests"] if r["method"] == "PATCH"]
    assert patches == [("0", 204), (str(MiB), 460)]
    assert result["fileId"] is None
    async with httpx.AsyncClient(headers={**AUTH, **TUS}, timeout=10) as client:
        head = await client.head(result["url"])
        assert head.status_code == 200
        assert head.headers["upload-offset"] == str(MiB)
        assert (await client.delete(result["url"])).status_code == 204


async def test_tus_js_parallel_uploads_are_concatenated(
    node: str, api_server: Server, tmp_path: Path
) -> None:
    """tus-js-client's parallelUploads: partial uploads at once, then a final one."""
    path, data = _file(tmp_path, "parallel-js.bin", 3 * MiB + 7)
    result = await _tusjs(node, f"{api_server.url}/tus", path, parallelUploads=3)
    file_id = _succeeded(result)
    posts = [r for r in result["requests"] if r["method"] == "POST"]
    assert len(posts) == 4  # three parts and the final upload
    assert sum(1 for r in result["requests"] if r["method"] == "PATCH") == 3
    assert _downloaded(api_server, file_id) == data
    async with httpx.AsyncClient(headers=AUTH) as client:
        final = await client.head(result["url"], headers=TUS)
        record = (await client.get(f"{api_server.url}/files/{file_id}")).json()
    assert final.headers["upload-concat"].startswith("final;")
    assert final.headers["file-id"] == file_id
    assert (record["filename"], record["size"]) == ("parallel-js.bin", len(data))
