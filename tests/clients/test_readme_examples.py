"""Every curl example of the README's code blocks (and docs/api.md's), run with the real curl
against a running server: each must succeed (2xx or 3xx) as written.

A command gets what its text names: `$B`, `$KEY` (the admin key), `$ID` (a fresh file: text
for /view and If-Match, else a JPEG; trashed first for /restore), `$KEY_ID` (a fresh key), `$NEXT_CURSOR`
(from a page of one), and the placeholders `<sha256>` and `<record etag>` of that file. The
files the examples upload (photo.jpg, report.pdf, ...) lie in the command's folder.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import unavailable
from tests.images import jpeg
from tests.integration.conftest import ADMIN_KEY
from tests.integration.test_server import Server, start_server

ROOT = Path(__file__).parents[2]
DOCUMENTS = (ROOT / "README.md", ROOT / "docs" / "api.md")
CURL = shutil.which("curl")
_BLOCK = re.compile(r"^```(?:sh|bash)\n(.*?)^```", re.S | re.M)
# The status of every transfer, on stderr, whatever the command does with the body.
_WRAPPER = 'curl() { command curl -sS -H "Authorization: Bearer $KEY" -w \'%{stderr}%{http_code}\\n\' "$@"; }'


_UPLOADED = {
    "photo.jpg": jpeg(64, 48),
    "report.pdf": b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n",
    "notes.txt": b"some notes\n",
    "build.log": b"build ok\n",
}


def curl_examples() -> list[str]:
    commands = []
    for document in DOCUMENTS:
        for block in _BLOCK.findall(document.read_text()):
            for command in block.replace("\\\n", " ").splitlines():
                command = command.strip()
                if command.startswith("curl "):
                    commands.append(command)
    return commands


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if CURL is None:
        unavailable("curl is not installed (apt-get install curl)")
    started = start_server(
        tmp_path_factory.mktemp("readme"),
        env={"FWB_TRASH_RETENTION": "3600"},
        log_name="readme.log",
    )
    yield started
    started.stop()


@pytest.fixture
def api(server: Server) -> Iterator[httpx.Client]:
    headers = {"authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=server.url, headers=headers) as client:
        yield client


def _upload(api: httpx.Client, name: str, data: bytes) -> dict[str, Any]:
    response = api.post("/upload", files={"file": (name, data)})
    assert response.status_code == 201, response.text
    record: dict[str, Any] = response.json()
    return record


def _variables(api: httpx.Client, command: str) -> tuple[dict[str, str], dict[str, str]]:
    # Text where the record must hold still: an image's record changes when its thumbnails
    # are rendered (and with it its ETag).
    if "/view/" in command or "If-Match" in command:
        record = _upload(api, "notes.txt", b"line one\nline two\n" * 10)
    else:
        record = _upload(api, "photo.jpg", jpeg(64, 48))
    if "/restore" in command:
        assert api.delete(f"/files/{record['id']}").status_code == 204
    variables = {"ID": record["id"]}
    if "$KEY_ID" in command:
        key = api.post("/admin/keys", json={"name": "example", "role": "reader"})
        variables["KEY_ID"] = key.json()["id"]
    if "$NEXT_CURSOR" in command:
        _upload(api, "second.txt", b"another file")
        variables["NEXT_CURSOR"] = api.get("/files", params={"limit": 1}).json()["next_cursor"]
    placeholders = {"<sha256>": record["sha256"], '"<record etag>"': record["etag"]}
    return variables, placeholders


@pytest.mark.parametrize("command", curl_examples())
def test_the_example_works(command: str, server: Server, api: httpx.Client, tmp_path: Path) -> None:
    variables, placeholders = _variables(api, command)
    for placeholder, value in placeholders.items():
        command = command.replace(placeholder, value)
    command = command.replace("http://127.0.0.1:8000", server.url)  # the quick start's address
    for name, data in _UPLOADED.items():
        if re.search(rf"(@|-T |--upload-file ){re.escape(name)}\b", command):
            (tmp_path / name).write_bytes(data)
    script = "\n".join(
        [
            f"B={server.url}",
            f"KEY={ADMIN_KEY}",
            *(f"{name}={value}" for name, value in variables.items()),
            _WRAPPER,
            command,
        ]
    )
    run = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, timeout=60)
    stderr = run.stderr.decode(errors="replace")
    statuses = [line for line in stderr.splitlines() if re.fullmatch(r"\d{3}", line)]
    assert run.returncode == 0, stderr
    assert statuses and all(200 <= int(s) < 400 for s in statuses), (command, stderr)


def test_the_examples_are_found() -> None:
    commands = curl_examples()
    assert len(commands) >= 30
    assert any("If-Match" in c for c in commands) and any("-T " in c for c in commands)
