"""Real tus clients against a real `filewallball serve`: tuspy (Python) here, tus-js-client
(Node) in test_tus_js.py. Each uploads, resumes after its connection is cut mid-request, and
sends the checksum extension's Upload-Checksum; the file must come back byte-identical."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from tusclient import client as tus_client

from tests.conftest import unavailable
from tests.integration.test_server import AUTH, MiB, Server
from tests.tcp_proxy import TcpProxy


def _data(size: int, seed: bytes = b"tus") -> bytes:
    block = hashlib.sha256(seed).digest() * (MiB // 32)
    return (block * (size // MiB + 1))[:size]


def _upload(url: str, path: Path, **options: object) -> str:
    """tuspy's upload of `path` to `url`; the File-Id its last response carried."""
    client = tus_client.TusClient(url, headers=dict(AUTH))
    uploader = client.uploader(
        file_path=str(path),
        metadata={"filename": path.name},
        **options,  # type: ignore[arg-type]
    )
    uploader.upload()
    file_id: str = uploader.request.response_headers["file-id"]
    return file_id


def _downloaded(server: Server, file_id: str) -> bytes:
    response = httpx.get(f"{server.url}/download/{file_id}", headers=AUTH, timeout=30)
    assert response.status_code == 200
    return response.content


def test_tuspy_uploads_in_chunks_with_checksums(api_server: Server, tmp_path: Path) -> None:
    data = _data(5 * MiB + 123)
    path = tmp_path / "chunks.bin"
    path.write_bytes(data)
    file_id = _upload(f"{api_server.url}/tus", path, chunk_size=MiB, upload_checksum=True)
    record = httpx.get(f"{api_server.url}/files/{file_id}", headers=AUTH).json()
    assert (record["filename"], record["size"]) == ("chunks.bin", len(data))
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert _downloaded(api_server, file_id) == data


@pytest.mark.parametrize("checksum", [False, True], ids=["plain", "checksum"])
async def test_tuspy_resumes_after_its_connection_is_cut(
    api_server: Server, tmp_path: Path, checksum: bool
) -> None:
    size, cut = 6 * MiB, 4 * MiB
    data = _data(size, seed=os.urandom(8))
    path = tmp_path / "cut.bin"
    path.write_bytes(data)
    proxy = TcpProxy("127.0.0.1", api_server.port, cut_after=cut)
    await proxy.start()
    try:
        # One PATCH for the whole file without a checksum (what arrived before the cut is
        # kept); 1 MiB ones with it (the cut one is sent again whole).
        options = {"chunk_size": MiB, "upload_checksum": True} if checksum else {}
        file_id = await asyncio.to_thread(
            _upload,
            f"http://127.0.0.1:{proxy.port}/tus",
            path,
            retries=3,
            retry_delay=0,
            **options,
        )
    finally:
        await proxy.stop()
    assert proxy.cuts == 1
    assert _downloaded(api_server, file_id) == data
    # It resumed where the server was, not from the start: about the file's bytes went up.
    resent = proxy.sent - size
    assert resent < (MiB + 64 * 1024 if checksum else 256 * 1024), resent


def test_the_readmes_curl_walkthrough_works(api_server: Server, tmp_path: Path) -> None:
    """The README's step-by-step tus block, run as written by bash with the real curl."""
    if shutil.which("curl") is None or shutil.which("openssl") is None:
        unavailable("curl and openssl are needed (apt-get install curl openssl)")
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = re.search(r"^```shell\n(.*?)^```", readme, re.S | re.M)
    assert block is not None and "/tus" in block.group(1)
    script = 'curl() { command curl -sS -H "Authorization: Bearer $KEY" "$@"; }\n' + block.group(1)
    env = {**os.environ, "B": api_server.url, "KEY": AUTH["authorization"].split()[1]}
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "upload-offset: 6" in done.stdout.lower()
    file_id = re.search(r"^file-id: (\S+)", done.stdout, re.M | re.I)
    assert file_id is not None, done.stdout
    assert _downloaded(api_server, file_id.group(1)) == b"hello world!"
    record = httpx.get(f"{api_server.url}/files/{file_id.group(1)}", headers=AUTH).json()
    assert (record["filename"], record["visibility"]) == ("hello.txt", "public")


def test_the_readmes_tuspy_example_works(api_server: Server, tmp_path: Path) -> None:
    """The README's tuspy block, run as written against a real server."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```", readme, re.S | re.M)
    example = next(block for block in blocks if "tusclient" in block)
    (tmp_path / "video.mp4").write_bytes(b"not really a video\n" * 1000)
    code = example.replace("http://127.0.0.1:8000", api_server.url)
    namespace: dict[str, object] = {"key": AUTH["authorization"].split()[1]}
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(code, "README.md", "exec"), namespace)
    finally:
        os.chdir(cwd)
    file_id = namespace["file_id"]
    assert isinstance(file_id, str)
    assert _downloaded(api_server, file_id) == b"not really a video\n" * 1000
