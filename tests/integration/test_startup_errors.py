"""Start-up as an operator meets it: a bad setting, a dependency that is not there, a port in
use. Each is one short line (naming the FWB_* variable, or host:port and the driver's reason)
and an exit code, never a traceback or a crash loop; `serve` with its database down starts,
reports not ready with where and why, and recovers when the database returns."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from typer.testing import CliRunner

from filewallball.entrypoints.cli import app
from filewallball.settings import SettingsError, load_settings
from tests.conftest import PG_ADMIN_DSN, REDIS_URL, S3_BUCKET
from tests.integration.conftest import ADMIN_KEY
from tests.integration.test_server import _free_port, start_server
from tests.s3_server import AWS_ENV, SeaweedS3

_PG = urlsplit(PG_ADMIN_DSN)
PG_HOST, PG_PORT = _PG.hostname or "127.0.0.1", _PG.port or 5432
COMMAND = str(Path(sys.executable).with_name("filewallball"))
PLACEHOLDER_SECRET = "PLACEHOLDER-change-me-PLACEHOLDER-change-me-0000"


def _run(*args: str, env: dict[str, str], data_dir: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FWB_")}
    return subprocess.run(
        [COMMAND, *args],
        env={**clean, "FWB_DATA_DIR": str(data_dir), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    return lines[0]


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"FWB_MAX_UPLOAD_BYTES": "abc"}, "FWB_MAX_UPLOAD_BYTES='abc'"),
        ({"FWB_BOOTSTRAP_ADMIN_KEY": "fwb_short"}, "FWB_BOOTSTRAP_ADMIN_KEY:"),
        ({"FWB_LOG_LEVEL": "loud"}, "FWB_LOG_LEVEL='loud'"),
        ({"FWB_RATE_LIMIT": "lots"}, "FWB_RATE_LIMIT='lots'"),
        (
            {"FWB_ENVIRONMENT": "prod", "FWB_SECRET_KEY": PLACEHOLDER_SECRET},
            "FWB_SECRET_KEY is the repository's placeholder",
        ),
    ],
)
@pytest.mark.parametrize("command", ["serve", "migrate", "worker"])
def test_a_bad_setting_is_one_line_and_exit_2(
    env: dict[str, str], variable: str, command: str, tmp_path: Path
) -> None:
    result = _run(command, env=env, data_dir=tmp_path)
    assert result.returncode == 2, result.stderr
    line = _one_line(result)
    assert line.startswith("filewallball: invalid setting: ") and variable in line
    assert "fwb_short" not in line and PLACEHOLDER_SECRET not in line  # secrets are not echoed


def test_placeholders_are_accepted_in_dev(tmp_path: Path) -> None:
    env = {"FWB_SECRET_KEY": PLACEHOLDER_SECRET}
    assert _run("migrate", env=env, data_dir=tmp_path).returncode == 0
    staged = _run("migrate", env={**env, "FWB_ENVIRONMENT": "staging"}, data_dir=tmp_path)
    assert staged.returncode == 2


@pytest.mark.parametrize(
    "args",
    [
        ["migrate"],
        ["keys", "list"],
        ["keys", "create", "--name", "x"],
        ["backup", "create", "-o", "b.tar"],
    ],
)
def test_a_one_shot_command_without_its_database_says_where_and_why(
    args: list[str], tmp_path: Path
) -> None:
    port = _free_port()  # nothing listens there
    env = {"FWB_DATABASE_URL": f"postgresql+asyncpg://fwb:secret@127.0.0.1:{port}/fwb"}
    result = _run(*args, env=env, data_dir=tmp_path)
    assert result.returncode == 1, result.stderr
    line = _one_line(result)
    assert f"database at 127.0.0.1:{port}: " in line, line
    assert "refused" in line.lower() or "connect call failed" in line.lower()
    assert "secret" not in line  # the password is never shown


def test_an_unknown_database_host_is_named(tmp_path: Path) -> None:
    env = {"FWB_DATABASE_URL": "postgresql+asyncpg://fwb:pw@no-such-host.invalid:5432/fwb"}
    line = _one_line(_run("migrate", env=env, data_dir=tmp_path))
    assert line.startswith("error: database at no-such-host.invalid:5432: ")


def test_a_data_dir_that_cannot_be_written(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = _run("serve", "--port", str(_free_port()), env={}, data_dir=blocker / "data")
    assert result.returncode == 2
    assert "FWB_DATA_DIR=" in _one_line(result)


def test_a_second_server_on_a_port_in_use_is_refused(tmp_path: Path) -> None:
    (tmp_path / "first").mkdir()
    first = start_server(tmp_path / "first")
    try:
        second = _run("serve", "--port", str(first.port), env={}, data_dir=tmp_path / "second")
        assert second.returncode == 1
        line = _one_line(second)
        assert (
            line
            == f"error: cannot serve on 127.0.0.1:{first.port}: address in use (another server listens)"
        )
        assert httpx.get(f"{first.url}/healthz").status_code == 200
    finally:
        first.stop()


class _Forwarder:
    """A TCP port that forwards to PostgreSQL only once opened: the database "returns"."""

    def __init__(self) -> None:
        self.port = _free_port()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def open(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port))
        listener.settimeout(0.2)
        self._thread = threading.Thread(target=self._serve, args=(listener,), daemon=True)
        self._thread.start()

    def _serve(self, listener: socket.socket) -> None:
        with listener:
            while not self._stop.is_set():
                try:
                    client, _ = listener.accept()
                except TimeoutError:
                    continue
                upstream = socket.create_connection((PG_HOST, PG_PORT))
                for a, b in ((client, upstream), (upstream, client)):
                    threading.Thread(target=_pipe, args=(a, b), daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def _pipe(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    finally:
        for end in (source, target):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def forwarder() -> Iterator[_Forwarder]:
    forward = _Forwarder()
    yield forward
    forward.close()


def test_serve_with_its_database_down_starts_reports_and_recovers(
    tmp_path: Path, pg_url: str, forwarder: _Forwarder
) -> None:
    url = pg_url.replace(f"@{PG_HOST}:{PG_PORT}/", f"@127.0.0.1:{forwarder.port}/")
    assert url != pg_url
    server = start_server(tmp_path, env={"FWB_DATABASE_URL": url, "FWB_AUTO_MIGRATE": "true"})
    try:
        ready = httpx.get(f"{server.url}/readyz")
        assert ready.status_code == 503
        detail = ready.json()["checks"]["database"]["detail"]
        assert detail.startswith(f"database at 127.0.0.1:{forwarder.port}: "), detail
        forwarder.open()
        deadline = time.monotonic() + 30
        while httpx.get(f"{server.url}/readyz").status_code != 200:
            assert time.monotonic() < deadline, "not ready after the database returned"
            time.sleep(0.5)
        key = {"authorization": f"Bearer {ADMIN_KEY}"}
        # The schema was not there at start: the first request finds the tables missing, and
        # that is a 503 like any other database trouble, never a 500.
        assert httpx.get(f"{server.url}/files", headers=key).status_code in (200, 401, 503)
    finally:
        server.stop()
    log = server.log_path.read_text()
    assert f"database at 127.0.0.1:{forwarder.port}" in log


# -- object storage (DESIGN.md §5) ------------------------------------------------------------


def test_bad_s3_settings_are_a_line_each_and_exit_2(tmp_path: Path) -> None:
    env = {
        "FWB_S3_BUCKET": "Files_Bucket",
        "FWB_S3_PREFIX": "/filewallball",
        "FWB_S3_ENDPOINT_URL": "http://minio:9000/files",
    }
    result = _run("serve", "--port", str(_free_port()), env=env, data_dir=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    named = [
        re.match(r"filewallball: invalid setting: (FWB_\w+)=", line)
        for line in result.stderr.strip().splitlines()
    ]
    assert [match and match[1] for match in named] == [
        "FWB_S3_BUCKET",
        "FWB_S3_ENDPOINT_URL",
        "FWB_S3_PREFIX",
    ], result.stderr


@pytest.mark.parametrize(
    "endpoint",
    [
        "minio:9000",  # no scheme
        "ftp://minio:9000",
        "http://minio:9000/files",  # a path: the bucket is FWB_S3_BUCKET
        "http://:9000",  # no host
        "http://[::1",  # botocore's ValueError at the first request, a traceback at start
        "http://minio:port",
        "http://minio:99999",
        "http://minio:9000?region=x",
        "http://key:secret@minio:9000",  # credentials come from the AWS chain
    ],
)
def test_an_s3_endpoint_botocore_would_refuse_is_a_bad_setting(
    endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FWB_S3_BUCKET", "files")
    monkeypatch.setenv("FWB_S3_ENDPOINT_URL", endpoint)
    with pytest.raises(SettingsError, match=r"^FWB_S3_ENDPOINT_URL=.*: must be an http"):
        load_settings()


@pytest.mark.parametrize(
    ("endpoint", "kept"),
    [
        ("http://minio:9000/", "http://minio:9000"),
        ("https://s3.eu-west-1.amazonaws.com", "https://s3.eu-west-1.amazonaws.com"),
        ("http://[::1]:8333", "http://[::1]:8333"),
    ],
)
def test_s3_endpoints_of_host_and_port_are_kept(
    endpoint: str, kept: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FWB_S3_ENDPOINT_URL", endpoint)
    assert load_settings().s3_endpoint_url == kept


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_a_bucket_that_does_not_exist_is_one_line_and_exit_1(
    tmp_path: Path, s3_server: SeaweedS3, command: str
) -> None:
    """SeaweedFS (like MinIO for an admin) would make the bucket at the first PUT: the start-up
    check (HeadBucket) is what tells the operator, and it creates nothing."""
    bucket = "no-such-bucket-here"
    env = {"FWB_S3_BUCKET": bucket, "FWB_S3_ENDPOINT_URL": s3_server.endpoint}
    args = ["--port", str(_free_port())] if command == "serve" else []
    if command == "worker":
        env["FWB_REDIS_URL"] = REDIS_URL
    result = _run(command, *args, env=env, data_dir=tmp_path)
    assert result.returncode == 1, result.stderr
    # Only the line (the worker has started logging by then: JSON lines on stdout).
    assert result.stderr.strip().splitlines() == [
        f"error: S3 bucket '{bucket}' at {s3_server.endpoint}: the bucket does not exist:"
        " create it, or set FWB_S3_BUCKET to one that exists"
    ]
    assert bucket not in {b["Name"] for b in s3_server.client().list_buckets()["Buckets"]}
    assert not (tmp_path / "blobs").exists()


def test_serve_with_its_object_store_down_starts_and_says_where(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    env = {**AWS_ENV, "FWB_S3_BUCKET": S3_BUCKET, "FWB_S3_ENDPOINT_URL": endpoint}
    # Every look at the store waits out botocore's retries first: on a loaded machine, the
    # start takes longer than the usual 30 s.
    server = start_server(tmp_path, env=env, start_timeout=90)
    try:
        ready = httpx.get(f"{server.url}/readyz")
        assert ready.status_code == 503
        detail = ready.json()["checks"]["blob_storage"]["detail"]
        assert detail.startswith(f"S3 bucket '{S3_BUCKET}' at {endpoint}: "), detail
    finally:
        server.stop()
    first = server.log_path.read_text().splitlines()[0]
    assert first.startswith(
        f"warning: S3 bucket '{S3_BUCKET}' at {endpoint}: looking up the bucket"
    )
    assert first.endswith("; starting anyway, not ready until it answers")
    assert not (tmp_path / "blobs").exists()


def test_help_shows_no_bool_metavar_and_every_option_has_help() -> None:
    runner = CliRunner()
    for args in (["serve"], ["keys", "create"], ["backup", "create"], ["backup", "restore"]):
        result = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0
        assert "<bool>" not in result.output
    create = runner.invoke(app, ["keys", "create", "--help"], env={"COLUMNS": "200"}).output
    for flag in ("--quota-bytes", "--quota-files"):
        line = next(line for line in create.splitlines() if flag in line)
        assert "store" in line, line
