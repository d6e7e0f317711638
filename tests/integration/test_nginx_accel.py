"""Behind nginx (components/nginx-front/filewallball.conf): nginx sends whole downloads, the app
decides."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import unavailable
from tests.integration.conftest import AppFactory
from tests.integration.test_server import AUTH, Server, _free_port, start_server

SNIPPET = (
    Path(__file__).parents[2]
    / "infra"
    / "kustomize"
    / "components"
    / "nginx-front"
    / "filewallball.conf"
)
ACCEL_HEADERS = {"x-sendfile-type": "X-Accel-Redirect", "x-accel-mapping": "/=/_fwb_blobs/"}


@dataclass
class Front:
    url: str
    app: Server


def _nginx() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found is None:
        unavailable("nginx is not installed (Debian: apt-get install nginx; .ci/run installs it)")
    assert found is not None
    return found


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    nginx = _nginx()
    data = tmp_path_factory.mktemp("accel")
    app = start_server(data, env={"FWB_TRUSTED_PROXIES": "127.0.0.1/32"})
    prefix = data / "nginx"
    prefix.mkdir()
    port = _free_port()
    user = "user root root;\n" if os.geteuid() == 0 else ""
    temp = " ".join(
        f"{kind}_temp_path {prefix}/{kind};" for kind in ("proxy", "fastcgi", "uwsgi", "scgi")
    )
    (prefix / "nginx.conf").write_text(
        f"{user}worker_processes 1;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log warn;\n"
        f"events {{}}\nhttp {{\n access_log off;\n client_body_temp_path {prefix}/body;\n {temp}\n"
        f" upstream filewallball {{ server 127.0.0.1:{app.port}; keepalive 8; }}\n"
        f" server {{\n  listen 127.0.0.1:{port};\n  set $fwb_blobs {data / 'blobs'}/;\n"
        f"  include {SNIPPET};\n }}\n}}\n"
    )
    command = [nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"]
    checked = subprocess.run([*command, "-t"], capture_output=True, text=True, check=False)
    if checked.returncode != 0:
        app.stop()
        pytest.fail(f"nginx -t refused the configuration:\n{checked.stderr}")
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield Front(url, app)
    finally:
        process.terminate()
        process.wait(timeout=10)
        app.stop()


def _access(server: Server, request_id: str) -> dict[str, object]:
    """The app's access event for `request_id` (the log is JSON lines)."""
    for _ in range(50):
        for line in server.log_path.read_text().splitlines():
            if line.startswith("{") and f'"{request_id}"' in line and '"access"' in line:
                event: dict[str, object] = json.loads(line)
                return event
        time.sleep(0.1)
    raise AssertionError(f"no access event for {request_id}")


def _upload(front: Front, body: bytes, name: str) -> dict[str, str]:
    answer = httpx.put(f"{front.url}/upload/{name}", content=body, headers=AUTH, timeout=30)
    assert answer.status_code == 201, answer.text
    record: dict[str, str] = answer.json()
    return record


def test_nginx_sends_the_whole_file_with_the_apps_headers(front: Front) -> None:
    body = os.urandom(3 * 1024 * 1024 + 7)
    record = _upload(front, body, "report.bin")
    answer = httpx.get(f"{front.url}/download/{record['id']}", headers=AUTH, timeout=30)
    assert answer.status_code == 200
    assert answer.content == body
    # The app's validators and headers, not nginx's own.
    assert answer.headers["etag"] == f'"{hashlib.sha256(body).hexdigest()}"'
    assert answer.headers["content-disposition"].startswith('attachment; filename="report.bin"')
    assert answer.headers["content-security-policy"] == "sandbox"
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["repr-digest"].startswith("sha-256=:")
    assert answer.headers["content-length"] == str(len(body))
    assert "x-accel-redirect" not in answer.headers
    # The app answered without a body: nginx sent the bytes.
    event = _access(front.app, answer.headers["x-request-id"])
    assert (event["status"], event["bytes_out"]) == (200, 0)
    again = httpx.get(
        f"{front.url}/download/{record['id']}",
        headers={**AUTH, "if-none-match": answer.headers["etag"]},
    )
    assert again.status_code == 304


def test_ranges_are_answered_by_the_app(front: Front) -> None:
    body = os.urandom(100_000)
    record = _upload(front, body, "ranged.bin")
    answer = httpx.get(
        f"{front.url}/download/{record['id']}", headers={**AUTH, "range": "bytes=10-19"}
    )
    assert answer.status_code == 206
    assert answer.content == body[10:20]
    event = _access(front.app, answer.headers["x-request-id"])
    assert event["bytes_out"] == 10


def test_the_internal_location_is_not_reachable_and_refusals_stay_the_apps(front: Front) -> None:
    record = _upload(front, b"secret bytes", "secret.txt")
    sha = record["sha256"]
    assert httpx.get(f"{front.url}/_fwb_blobs/{sha[:2]}/{sha[2:4]}/{sha}").status_code == 404
    refused = httpx.get(f"{front.url}/download/{record['id']}")
    assert refused.status_code == 401
    assert refused.headers["content-type"] == "application/problem+json"
    httpx.delete(f"{front.url}/files/{record['id']}", headers=AUTH).raise_for_status()
    assert httpx.get(f"{front.url}/download/{record['id']}", headers=AUTH).status_code == 404


async def test_only_a_trusted_proxy_gets_an_accel_answer(make_client: AppFactory) -> None:
    for trusted, redirected in (([], False), (["127.0.0.1/32"], True)):
        async with make_client(trusted_proxies=trusted) as client:
            created = (await client.put("/upload/a.txt", content=b"hello")).json()
            answer = await client.get(f"/download/{created['id']}", headers=ACCEL_HEADERS)
            assert answer.status_code == 200
            if redirected:
                sha = created["sha256"]
                assert answer.headers["x-accel-redirect"].endswith(f"/{sha[:2]}/{sha[2:4]}/{sha}")
                assert answer.headers["x-accel-redirect"].startswith("/_fwb_blobs/")
                assert answer.content == b""
            else:
                assert "x-accel-redirect" not in answer.headers
                assert answer.content == b"hello"
            # Without the proxy's request headers, even a trusted peer gets the bytes.
            plain = await client.get(f"/download/{created['id']}")
            assert plain.content == b"hello"
