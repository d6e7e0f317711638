"""`filewallball serve --ssl-certfile --ssl-keyfile` serves HTTPS, with HSTS."""

from __future__ import annotations

import shutil
import ssl
import subprocess

import httpx
import pytest

from tests.integration.conftest import ADMIN_KEY
from tests.integration.test_server import SERVERS, Server, start_server


@pytest.fixture(scope="module", params=SERVERS)
def tls_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Server:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip(reason="openssl is not installed: no certificate to serve")
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(folder / "key.pem"),
            "-out",
            str(folder / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )
    data_dir = folder / "data"
    data_dir.mkdir()
    return start_server(
        data_dir,
        [
            "--server",
            request.param,
            "--ssl-certfile",
            str(folder / "cert.pem"),
            "--ssl-keyfile",
            str(folder / "key.pem"),
        ],
        scheme="https",
        verify=ssl.create_default_context(cafile=folder / "cert.pem"),
    )


def test_https_round_trip_with_hsts(tls_server: Server) -> None:
    cert = ssl.create_default_context(cafile=tls_server.data_dir.parent / "cert.pem")
    with httpx.Client(
        base_url=tls_server.url, verify=cert, headers={"authorization": f"Bearer {ADMIN_KEY}"}
    ) as client:
        health = client.get("/healthz")
        assert health.status_code == 200
        assert health.headers["strict-transport-security"].startswith("max-age=")
        record = client.put("/upload/tls.txt", content=b"over tls").json()
        assert record["urls"]["download"].startswith("https://")
        assert client.get(record["urls"]["download"]).content == b"over tls"
    tls_server.stop()
