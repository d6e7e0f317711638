"""Backup and restore end to end: real SQLite and PostgreSQL, real blobs, the real CLI.

Every round trip populates an instance through the HTTP app, backs it up, verifies the archive,
restores it into a new instance on the other backend, and then compares every record and
downloads every file from the restored instance.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import random
import re
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import yaml
from typer.testing import CliRunner

from filewallball.adapters.disk import DiskBlobStore
from filewallball.adapters.sql import (
    api_keys,
    audit_log,
    blobs,
    create_engine,
    files,
    ip_rules,
    utc,
)
from filewallball.backup import (
    BackupError,
    Instance,
    SkippedFile,
    create_backup,
    restore_backup,
    verify_backup,
)
from filewallball.backup import check as backup_check
from filewallball.backup import restore as backup_restore
from filewallball.backup.rules import FREE_SPACE_MARGIN
from filewallball.container import Container, build_container, close_resources, open_resources
from filewallball.domain.models import Sha256, thumbnail_keys
from filewallball.domain.ports import BlobStore
from filewallball.domain.security import Outcome
from filewallball.entrypoints.cli import app
from filewallball.entrypoints.logs import configure_logging
from filewallball.settings import Settings
from tests.conftest import staged_files
from tests.fakes import FakeAuditLog
from tests.images import png
from tests.integration.conftest import ADMIN_KEY, GENEROUS, S3Object, blob_files, serve
from tests.integration.test_server import start_server
from tests.s3_server import SeaweedS3
from tests.unit.test_backup_archive import (
    entry,
    plain,
    sample,
    tar_bytes,
)

CLI = Path(sys.executable).with_name("filewallball")
CRONJOB = Path(__file__).parents[2] / "infra" / "kustomize" / "base" / "backup-cronjob.yaml"
TABLES = {"files": files, "blobs": blobs, "api_keys": api_keys, "ip_rules": ip_rules}
Rows = dict[str, list[dict[str, Any]]]


@dataclass
class Population:
    contents: dict[str, bytes] = field(default_factory=dict)  # file id -> bytes
    trashed: str = ""
    image: str = ""
    uploader_key: str = ""
    uploader_file: str = ""


def as_key(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def populate(settings: Settings) -> Population:
    """Files (duplicates, an image, an expiring one, a trashed one), keys, IP rules, audit."""
    made = Population()
    async with serve(settings) as admin:

        async def put(name: str, data: bytes, key: str = ADMIN_KEY, **params: str) -> str:
            response = await admin.put(
                f"/upload/{name}", content=data, params=params, headers=as_key(key)
            )
            assert response.status_code == 201, response.text
            file_id: str = response.json()["id"]
            made.contents[file_id] = data
            return file_id

        await put("alpha.txt", b"alpha\n" * 1000)
        await put("alpha-again.txt", b"alpha\n" * 1000)  # the same bytes: one blob, two files
        await put("ñandú 日本.txt", "ñandú 日本\n".encode())
        await put("later.txt", b"expires in a week", expires_in="7d")
        await put("random.bin", random.Random(5).randbytes(300_000))
        picture = png(64, 48)
        uploaded = await admin.post(
            "/upload", files={"file": ("pic.png", picture)}, data={"visibility": "public"}
        )
        assert uploaded.status_code == 201, uploaded.text
        made.image = uploaded.json()["id"]
        made.contents[made.image] = picture
        made.trashed = await put("trash.txt", b"into the trash")
        assert (await admin.delete(f"/files/{made.trashed}")).status_code == 204
        created = await admin.post(
            "/admin/keys",
            json={
                "name": "uploader",
                "role": "uploader",
                "allowed_cidrs": ["127.0.0.0/8"],
                "quota_bytes": 1_000_000,
                "quota_files": 50,
            },
        )
        assert created.status_code == 201, created.text
        made.uploader_key = created.json()["key"]
        made.uploader_file = await put("mine.txt", b"the uploader's", key=made.uploader_key)
        expiring = {
            "name": "reader",
            "role": "reader",
            "expires_at": (datetime.now(UTC) + timedelta(days=30)).isoformat(),
        }
        assert (await admin.post("/admin/keys", json=expiring)).status_code == 201
        rule = {"cidr": "192.0.2.0/24", "action": "deny", "note": "documentation range"}
        assert (await admin.post("/admin/ip-rules", json=rule)).status_code == 201
        denied = await admin.get("/files", headers=as_key("fwb_nosuchkey00_" + "x" * 43))
        assert denied.status_code == 401
    return made


async def dump(url: str) -> Rows:
    """Every backed-up table, rows as dicts in key order, date-times in UTC."""
    engine = create_engine(url)
    rows: Rows = {}
    try:
        async with engine.connect() as connection:
            for name, table in {**TABLES, "audit_log": audit_log}.items():
                [key] = table.primary_key.columns
                found = (await connection.execute(sa.select(table))).mappings().all()
                rows[name] = sorted(
                    (
                        {k: utc(v) if isinstance(v, datetime) else v for k, v in row.items()}
                        for row in found
                    ),
                    key=lambda row: str(row[key.name]).zfill(20),
                )
    finally:
        await engine.dispose()
    return rows


def assert_same_records(source: Rows, target: Rows) -> None:
    """The target holds exactly the source's records, plus the restore's own audit entry."""
    for table in TABLES:
        assert target[table] == source[table], table
    archived = [row for row in source["audit_log"] if row["action"] != "backup.create"]
    assert len(archived) < len(source["audit_log"]), "the backup is in the source's audit log"
    *restored, restore_entry = target["audit_log"]
    assert restored == archived
    assert restore_entry["action"] == "backup.restore"
    assert restore_entry["id"] > archived[-1]["id"]


async def assert_serves_everything(settings: Settings, made: Population) -> None:
    """Every file downloads byte-identical; restored keys authenticate; thumbnails render."""
    async with serve(settings) as admin:
        for file_id, data in made.contents.items():
            if file_id == made.trashed:
                continue
            response = await admin.get(f"/download/{file_id}")
            assert response.status_code == 200, response.text
            assert hashlib.sha256(response.content).digest() == hashlib.sha256(data).digest()
        gone = await admin.get(f"/download/{made.trashed}")
        assert gone.status_code == 404
        back = await admin.post(f"/files/{made.trashed}/restore")
        assert back.status_code == 200, back.text
        again = await admin.get(f"/download/{made.trashed}")
        assert again.content == made.contents[made.trashed]
        mine = await admin.get("/files", headers=as_key(made.uploader_key))
        assert mine.status_code == 200, mine.text
        # Its own file, and the public image.
        visible = {item["id"] for item in mine.json()["items"]}
        assert visible == {made.uploader_file, made.image}
        # Thumbnails are not archived: the restored instance renders them when asked.
        thumbnail = await admin.get(f"/thumbnails/{made.image}", params={"size": "small"})
        assert thumbnail.status_code == 200, thumbnail.text
        assert thumbnail.headers["content-type"].startswith("image/")
        # New audit entries follow the restored ones (PostgreSQL's sequence was moved on).
        assert (await admin.put("/upload/new.txt", content=b"after the restore")).status_code == 201


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`filewallball backup ...` as a real process, configured only by `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FWB_")}
    return subprocess.run(
        [str(CLI), "backup", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def invoke(*args: str, **env: str | None) -> Any:
    """`filewallball backup ...` in this process (typer's CliRunner)."""
    unset: dict[str, str | None] = {k: None for k in os.environ if k.startswith("FWB_")}
    try:
        return CliRunner().invoke(app, ["backup", *args], env={**unset, **env})
    finally:
        # The command pointed the logs at the runner's stdout, closed by now: point them back.
        configure_logging()


def test_sqlite_to_postgresql_round_trip_with_the_real_cli(tmp_path: Path, pg_url: str) -> None:
    source, target, backups = tmp_path / "source", tmp_path / "target", tmp_path / "backups"
    backups.mkdir()
    settings = Settings(
        data_dir=source, bootstrap_admin_key=ADMIN_KEY, trash_retention="1h", **GENEROUS
    )
    made = asyncio.run(populate(settings))
    archive = backups / "fwb.tar.gz"

    created = cli("create", "--out", str(archive), FWB_DATA_DIR=str(source))
    assert created.returncode == 0, created.stderr
    assert re.match(r"backup written to .*fwb\.tar\.gz: 8 files, 7 blobs", created.stdout)
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    assert [p.name for p in backups.iterdir()] == ["fwb.tar.gz"]  # no spool, no temp left

    verified = invoke("verify", str(archive))
    assert verified.exit_code == 0, verified.output
    assert "is a sound FileWallBall backup: 8 files" in verified.output

    restored = cli("restore", str(archive), FWB_DATA_DIR=str(target), FWB_DATABASE_URL=pg_url)
    assert restored.returncode == 0, restored.stderr
    assert "installed the archive's server secret" in restored.stderr

    assert_same_records(
        asyncio.run(dump(settings.resolved_database_url)), asyncio.run(dump(pg_url))
    )
    assert (target / "secret.key").read_bytes() == (source / "secret.key").read_bytes()
    assert stat.S_IMODE((target / "secret.key").stat().st_mode) == 0o600
    restored_settings = Settings(
        data_dir=target, database_url=pg_url, trash_retention="1h", **GENEROUS
    )
    asyncio.run(assert_serves_everything(restored_settings, made))

    again = cli("restore", str(archive), FWB_DATA_DIR=str(target), FWB_DATABASE_URL=pg_url)
    assert again.returncode == 1
    assert again.stderr.startswith("error: the target is not empty (files: 9")


def test_postgresql_to_sqlite_round_trip_needs_the_same_secret(tmp_path: Path, pg_url: str) -> None:
    secret = "a-shared-server-secret-" + "s" * 24
    source, target = tmp_path / "source", tmp_path / "target"
    settings = Settings(
        data_dir=source,
        database_url=pg_url,
        auto_migrate=True,
        secret_key=secret,
        bootstrap_admin_key=ADMIN_KEY,
        trash_retention="1h",
        **GENEROUS,
    )
    made = asyncio.run(populate(settings))
    archive = tmp_path / "fwb.tar"
    env = {"FWB_DATA_DIR": str(source), "FWB_DATABASE_URL": pg_url, "FWB_SECRET_KEY": secret}
    created = invoke("create", "--out", str(archive), "--quiet", **env)
    assert created.exit_code == 0, created.output
    assert invoke("verify", str(archive)).exit_code == 0

    # Without the source's FWB_SECRET_KEY the keys could not authenticate: refused, untouched.
    refused = invoke("restore", str(archive), FWB_DATA_DIR=str(target))
    assert refused.exit_code == 1
    assert "error: the archive's API keys were hashed with the source's FWB_SECRET_KEY" in (
        refused.output
    )
    assert blob_files(target) == []
    assert not (target / "secret.key").exists()

    restored = invoke("restore", str(archive), FWB_DATA_DIR=str(target), FWB_SECRET_KEY=secret)
    assert restored.exit_code == 0, restored.output
    target_settings = Settings(data_dir=target, secret_key=secret, trash_retention="1h", **GENEROUS)
    assert_same_records(
        asyncio.run(dump(pg_url)), asyncio.run(dump(target_settings.resolved_database_url))
    )
    asyncio.run(assert_serves_everything(target_settings, made))


async def _upload(client: httpx.AsyncClient, name: str, data: bytes) -> str:
    response = await client.put(f"/upload/{name}", content=data)
    assert response.status_code == 201, response.text
    file_id: str = response.json()["id"]
    return file_id


async def test_files_deleted_after_the_snapshot_are_left_out_and_listed(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "source", bootstrap_admin_key=ADMIN_KEY, **GENEROUS)
    archive = tmp_path / "fwb.tar"
    async with serve(settings) as client:
        alone = await _upload(client, "alone.txt", b"nobody else has these bytes")
        shared = await _upload(client, "shared.txt", b"two files share these")
        twin = await _upload(client, "twin.txt", b"two files share these")

        async def delete_concurrently() -> None:
            # Between the snapshot and the blob copy: the first DELETE takes its blob with it,
            # the second leaves the blob to its twin.
            for file_id in (alone, shared):
                assert (await client.delete(f"/files/{file_id}")).status_code == 204

        container = build_container(settings)

        await open_resources(container)
        try:
            result = await create_backup(
                archive, _instance(settings, container), after_snapshot=delete_concurrently
            )
        finally:
            await close_resources(container)
    sha = hashlib.sha256(b"nobody else has these bytes").hexdigest()
    assert result.skipped == [SkippedFile(file_id=alone, sha256=sha, reason="deleted")]
    assert result.manifest.skipped == 1
    assert result.manifest.rows["files"] == 2  # the snapshot's shared and twin
    assert (await verify_backup(archive)) == result.manifest

    target = Settings(data_dir=tmp_path / "target", **GENEROUS)
    target_container = build_container(target)
    await open_resources(target_container)
    try:
        await _restore(target, target_container, archive)
    finally:
        await close_resources(target_container)
    restored = await dump(target.resolved_database_url)
    assert sorted(row["id"] for row in restored["files"]) == sorted([shared, twin])


def _instance(
    settings: Settings, container: Container, *, blob_store: BlobStore | None = None
) -> Instance:
    """The instance `filewallball backup` would work on with these settings."""
    return Instance(
        engine=container.engine(),
        blobs=blob_store or container.blobs(),
        audit=container.audit_log(),
        clock=container.clock(),
        database_url=settings.resolved_database_url,
        data_dir=settings.data_dir,
        secret_file=settings.secret_key_file,
        admin_key_file=settings.admin_key_file,
        secret_key=settings.secret_key,
    )


async def _restore(
    settings: Settings, container: Container, archive: Path, *, blob_store: BlobStore | None = None
) -> None:
    result = await restore_backup(archive, _instance(settings, container, blob_store=blob_store))
    assert result.audit_error is None


async def test_backup_entries_go_through_the_audit_log_and_a_failed_one_is_reported(
    tmp_path: Path,
) -> None:
    source, archive = tmp_path / "source", tmp_path / "fwb.tar"
    await _two_files(source)
    settings = Settings(data_dir=source, **GENEROUS)
    audit = FakeAuditLog()
    container = build_container(settings)
    await open_resources(container)
    try:
        created = await create_backup(archive, replace(_instance(settings, container), audit=audit))
    finally:
        await close_resources(container)
    assert created.audit_error is None
    [entry] = audit.entries
    assert (entry.action, entry.outcome, entry.actor, entry.key_id) == (
        "backup.create",
        Outcome.SUCCESS,
        "backup",
        None,
    )
    assert (entry.target, entry.bytes) == ("fwb.tar", archive.stat().st_size)
    assert entry.detail == "2 files, 2 blobs, 0 skipped"

    target = Settings(data_dir=tmp_path / "target", **GENEROUS)
    down = FakeAuditLog()
    down.fail_writes = True
    target_container = build_container(target)
    await open_resources(target_container)
    try:
        restored = await restore_backup(
            archive, replace(_instance(target, target_container), audit=down)
        )
    finally:
        await close_resources(target_container)
    # The restore stands (it was committed before the entry was written), and says so.
    assert restored.audit_error == "writing the audit entry failed: database is unavailable"
    rows = await dump(target.resolved_database_url)
    assert len(rows["files"]) == 2
    assert "backup.restore" not in {row["action"] for row in rows["audit_log"]}


def test_a_backup_while_a_real_server_serves_uploads_and_deletes(tmp_path: Path) -> None:
    """The backup races real traffic: it succeeds, verifies, and restores only whole files.

    Whether a DELETE lands between the snapshot and the copy of its blob is up to timing here,
    so this test does not depend on it (`left_out` may be empty): the deterministic
    test_files_deleted_after_the_snapshot_are_left_out_and_listed covers that path. What this
    one asserts holds under any interleaving: the archive verifies and restores, every file
    that lived throughout is restored, every restored file downloads byte-identical, and
    whatever was left out was deleted.
    """
    source = tmp_path / "source"
    source.mkdir()
    server = start_server(source)
    contents: dict[str, bytes] = {}
    deleted: set[str] = set()
    stop = threading.Event()
    errors: list[str] = []
    auth = as_key(ADMIN_KEY)
    try:
        with httpx.Client(base_url=server.url, headers=auth, timeout=30) as client:
            for number in range(40):
                data = random.Random(number).randbytes(512 * 1024) + b"%d" % number
                response = client.put(f"/upload/f{number}.bin", content=data)
                assert response.status_code == 201, response.text
                contents[response.json()["id"]] = data

        def churn() -> None:
            generator = random.Random(99)
            with httpx.Client(base_url=server.url, headers=auth, timeout=30) as client:
                number = 1000
                while not stop.is_set():
                    victims = sorted(set(contents) - deleted)
                    if victims and generator.random() < 0.6:
                        victim = generator.choice(victims)
                        if client.delete(f"/files/{victim}").status_code == 204:
                            deleted.add(victim)
                    else:
                        data = generator.randbytes(64 * 1024)
                        response = client.put(f"/upload/n{number}.bin", content=data)
                        if response.status_code != 201:
                            errors.append(response.text)
                            return
                        contents[response.json()["id"]] = data
                        number += 1

        before = set(contents)
        worker = threading.Thread(target=churn)
        worker.start()
        try:
            time.sleep(0.2)
            archive = tmp_path / "live.tar.gz"
            created = cli("create", "--out", str(archive), FWB_DATA_DIR=str(source))
        finally:
            stop.set()
            worker.join(timeout=60)
        assert errors == []
        assert created.returncode == 0, created.stderr
        assert deleted, "the churn deleted nothing: the race was not exercised"
    finally:
        server.stop()

    left_out = set(re.findall(r"left out file (\S+) \(deleted during the backup\)", created.stderr))
    assert left_out <= deleted
    assert invoke("verify", str(archive)).exit_code == 0
    target = tmp_path / "target"
    restored = invoke("restore", str(archive), FWB_DATA_DIR=str(target))
    assert restored.exit_code == 0, restored.output

    target_settings = Settings(data_dir=target, **GENEROUS)
    rows = asyncio.run(dump(target_settings.resolved_database_url))
    restored_ids = {row["id"] for row in rows["files"]}
    assert before - deleted <= restored_ids  # nothing that lived throughout is missing
    assert not restored_ids & left_out

    async def download_all() -> None:
        async with serve(target_settings) as client:
            for file_id in restored_ids:
                response = await client.get(f"/download/{file_id}")
                assert response.status_code == 200, response.text
                assert response.content == contents[file_id]

    asyncio.run(download_all())


def _blob_path(data_dir: Path, data: bytes) -> Path:
    sha = hashlib.sha256(data).hexdigest()
    return data_dir / "blobs" / sha[:2] / sha[2:4] / sha


async def _two_files(data_dir: Path) -> tuple[str, str]:
    settings = Settings(data_dir=data_dir, bootstrap_admin_key=ADMIN_KEY, **GENEROUS)
    async with serve(settings) as client:
        return (
            await _upload(client, "kept.txt", b"these bytes stay"),
            await _upload(client, "lost.txt", b"these bytes get lost"),
        )


def test_a_lost_blob_fails_the_backup_unless_told_to_skip_it(tmp_path: Path) -> None:
    source, out = tmp_path / "source", tmp_path / "out"
    out.mkdir()
    _, lost = asyncio.run(_two_files(source))
    _blob_path(source, b"these bytes get lost").unlink()

    failed = invoke("create", "--out", str(out / "fwb.tar"), FWB_DATA_DIR=str(source))
    assert failed.exit_code == 1
    assert "is missing from the blob store though files still use it" in failed.output
    assert list(out.iterdir()) == []  # no half-written archive, no temp files

    skipped = invoke(
        "create", "--out", str(out / "fwb.tar"), "--skip-missing", FWB_DATA_DIR=str(source)
    )
    assert skipped.exit_code == 0, skipped.output
    assert f"warning: left out file {lost} (its bytes are lost)" in skipped.output
    manifest = asyncio.run(verify_backup(out / "fwb.tar"))
    assert (manifest.rows["files"], manifest.skipped) == (1, 1)


def test_a_corrupt_blob_fails_the_backup(tmp_path: Path) -> None:
    source, out = tmp_path / "source", tmp_path / "out"
    out.mkdir()
    asyncio.run(_two_files(source))
    blob = _blob_path(source, b"these bytes stay")
    blob.write_bytes(b"THESE BYTES STAY")  # same size, other bytes: bit rot

    failed = invoke("create", "--out", str(out / "fwb.tar"), FWB_DATA_DIR=str(source))
    assert failed.exit_code == 1
    assert "is corrupt in the blob store" in failed.output
    assert list(out.iterdir()) == []


def test_restore_into_a_started_instance_replaces_its_bootstrap_key(tmp_path: Path) -> None:
    source, target = tmp_path / "source", tmp_path / "target"
    asyncio.run(_two_files(source))
    archive = tmp_path / "fwb.tar"
    assert invoke("create", "--out", str(archive), FWB_DATA_DIR=str(source)).exit_code == 0

    async def start_once() -> None:
        async with serve(Settings(data_dir=target, **GENEROUS), key=None):
            pass  # a first start: a generated admin key (admin.key) and server secret

    asyncio.run(start_once())
    assert (target / "admin.key").exists()
    restored = invoke("restore", str(archive), FWB_DATA_DIR=str(target))
    assert restored.exit_code == 0, restored.output
    assert f"removed {target / 'admin.key'}" in restored.output
    assert not (target / "admin.key").exists()
    assert (target / "secret.key").read_bytes() == (source / "secret.key").read_bytes()

    in_use = tmp_path / "in-use"
    asyncio.run(_two_files(in_use))
    refused = invoke("restore", str(archive), FWB_DATA_DIR=str(in_use))
    assert refused.exit_code == 1
    assert "error: the target is not empty (files: 2, blob records: 2" in refused.output


async def test_a_hostile_archive_restores_nothing(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "target", **GENEROUS)
    members = sample()
    [_, second] = [name for name, _ in members if name.startswith("blobs/")]
    # The first blob is sound (and gets written), the second's bytes are not its name.
    corrupt = [(n, b"not these bytes" if n == second else d) for n, d in members]
    escaping = [*plain(members[:2]), entry("../../escaped", b"gotcha"), *plain(members[2:])]
    for number, raw in enumerate([tar_bytes(plain(corrupt)), tar_bytes(escaping)]):
        archive = tmp_path / f"hostile{number}.tar"
        archive.write_bytes(raw)
        container = build_container(settings)
        await open_resources(container)
        try:
            with pytest.raises(BackupError, match=r"not to its name|points outside"):
                await _restore(settings, container, archive)
        finally:
            await close_resources(container)
        assert blob_files(settings.data_dir) == []  # the sound blob was removed again
        rows = await dump(settings.resolved_database_url)
        assert all(rows[table] == [] for table in rows)
    assert not (tmp_path.parent / "escaped").exists() and not (tmp_path / "escaped").exists()
    # No staging directory is left in the data directory.
    assert sorted(p.name for p in settings.data_dir.iterdir() if p.name.startswith(".")) == []


async def test_a_failed_restore_keeps_blob_files_it_did_not_create(tmp_path: Path) -> None:
    """The database is lost, the data volume survives, and a broken archive is restored onto
    it: the blob files that were there stay; only those the restore wrote go again."""
    settings = Settings(data_dir=tmp_path / "target", **GENEROUS)
    members = sample((b"on the surviving volume\n", b"only in the archive\n", b"corrupt\n"))
    data_of = {name: data for name, data in members if name.startswith("blobs/")}
    survivor, _written, corrupt = list(data_of)  # in archive order: the corrupt one comes last
    archive = tmp_path / "broken.tar"
    archive.write_bytes(
        tar_bytes(plain([(n, b"not these bytes" if n == corrupt else d) for n, d in members]))
    )
    kept = _blob_path(settings.data_dir, data_of[survivor])
    kept.parent.mkdir(parents=True)
    kept.write_bytes(data_of[survivor])
    container = build_container(settings)
    await open_resources(container)
    try:
        with pytest.raises(BackupError, match="not to its name"):
            await _restore(settings, container, archive)
    finally:
        await close_resources(container)
    assert blob_files(settings.data_dir) == [kept]
    assert kept.read_bytes() == data_of[survivor]


# -- across blob backends: S3 <-> local disk (DESIGN.md §5) ----------------------------------

MiB = 1024 * 1024
# Larger than one part of S3's smallest size (FWB_S3_PART_SIZE_BYTES below): a multipart upload.
LARGE = random.Random(16).randbytes(5 * MiB + 4321)


def _s3_env(s3: dict[str, str]) -> dict[str, str]:
    """The FWB_S3_* variables of `s3_settings`, with parts of S3's smallest size."""
    return {f"FWB_{name.upper()}": value for name, value in s3.items()} | {
        "FWB_S3_PART_SIZE_BYTES": str(5 * MiB)
    }


async def populate_with_large_files(settings: Settings) -> Population:
    """populate's files, a multipart-sized one twice (one blob), and a stored rendition."""
    made = await populate(settings)
    async with serve(settings) as admin:
        for name in ("large.bin", "large-again.bin"):
            made.contents[await _upload(admin, name, LARGE)] = LARGE
        # Renditions live beside the blobs but are not archived: the target renders its own.
        thumbnail = await admin.get(f"/thumbnails/{made.image}", params={"size": "small"})
        assert thumbnail.status_code == 200, thumbnail.text
    return made


def _distinct(made: Population) -> dict[str, bytes]:
    return {hashlib.sha256(data).hexdigest(): data for data in made.contents.values()}


def assert_blob_files_are(data_dir: Path, made: Population) -> None:
    """The local disk holds one blob file per distinct content, at its path, with its bytes."""
    expected = _distinct(made)
    found = {path.name: path for path in blob_files(data_dir)}
    assert sorted(found) == sorted(expected)
    for sha, data in expected.items():
        assert found[sha] == _blob_path(data_dir, data)
        assert found[sha].read_bytes() == data
    assert staged_files(data_dir / "blobs" / ".tmp") == []


def assert_objects_are(server: SeaweedS3, prefix: str, made: Population) -> None:
    """The bucket holds one object per distinct content under <prefix>blobs/, nothing else
    (no temp object, no multipart upload left open)."""
    expected = _distinct(made)
    assert server.keys(prefix) == sorted(f"{prefix}blobs/{sha}" for sha in expected)
    assert server.multipart_uploads(prefix) == []
    for sha, data in expected.items():
        assert S3Object(server, f"{prefix}blobs/{sha}").read_bytes() == data


def test_an_s3_instance_restores_onto_a_local_disk(
    tmp_path: Path, pg_url: str, s3_settings: dict[str, str], s3_server: SeaweedS3
) -> None:
    source, target, prefix = tmp_path / "source", tmp_path / "target", s3_settings["s3_prefix"]
    settings = Settings(
        data_dir=source,
        database_url=pg_url,
        auto_migrate=True,
        bootstrap_admin_key=ADMIN_KEY,
        trash_retention="1h",
        s3_part_size_bytes=5 * MiB,
        **s3_settings,  # type: ignore[arg-type]
        **GENEROUS,
    )
    made = asyncio.run(populate_with_large_files(settings))
    assert not (source / "blobs").exists()
    stored = {key.removeprefix(f"{prefix}blobs/") for key in s3_server.keys(f"{prefix}blobs/")}
    renditions = stored - set(_distinct(made))
    assert renditions and renditions <= set(
        thumbnail_keys(Sha256(hashlib.sha256(made.contents[made.image]).hexdigest()))
    )
    archive = tmp_path / "fwb.tar.gz"

    env = {"FWB_DATA_DIR": str(source), "FWB_DATABASE_URL": pg_url, **_s3_env(s3_settings)}
    created = cli("create", "--out", str(archive), **env)
    assert created.returncode == 0, created.stderr
    assert "10 files, 8 blobs" in created.stdout  # the renditions are not archived
    assert "Unclosed" not in created.stdout  # the S3 client was closed (asyncio's error log)
    assert invoke("verify", str(archive)).exit_code == 0

    restored = cli("restore", str(archive), FWB_DATA_DIR=str(target))  # SQLite, blobs on disk
    assert restored.returncode == 0, restored.stderr
    target_settings = Settings(data_dir=target, trash_retention="1h", **GENEROUS)
    assert_same_records(
        asyncio.run(dump(pg_url)), asyncio.run(dump(target_settings.resolved_database_url))
    )
    assert_blob_files_are(target, made)
    asyncio.run(assert_serves_everything(target_settings, made))


def test_a_disk_instance_restores_into_s3(
    tmp_path: Path, pg_url: str, s3_settings: dict[str, str], s3_server: SeaweedS3
) -> None:
    source, target, prefix = tmp_path / "source", tmp_path / "target", s3_settings["s3_prefix"]
    settings = Settings(
        data_dir=source, bootstrap_admin_key=ADMIN_KEY, trash_retention="1h", **GENEROUS
    )
    made = asyncio.run(populate_with_large_files(settings))
    archive = tmp_path / "fwb.tar"
    created = invoke("create", "--out", str(archive), "--quiet", FWB_DATA_DIR=str(source))
    assert created.exit_code == 0, created.output
    assert "10 files, 8 blobs" in created.output

    env = {"FWB_DATA_DIR": str(target), "FWB_DATABASE_URL": pg_url, **_s3_env(s3_settings)}
    # A mistyped bucket is refused, not made (SeaweedFS would make it at the first PUT).
    mistyped = cli("restore", str(archive), **{**env, "FWB_S3_BUCKET": "fwb-tset"})
    assert mistyped.returncode == 1
    assert mistyped.stderr.splitlines() == [
        f"error: S3 bucket 'fwb-tset' at {s3_server.endpoint}: the bucket does not exist"
    ]
    assert "fwb-tset" not in {b["Name"] for b in s3_server.client().list_buckets()["Buckets"]}
    restored = cli("restore", str(archive), **env)
    assert restored.returncode == 0, restored.stderr
    assert "Unclosed" not in restored.stdout  # the S3 client was closed (asyncio's error log)
    assert_same_records(
        asyncio.run(dump(settings.resolved_database_url)), asyncio.run(dump(pg_url))
    )
    assert_objects_are(s3_server, prefix, made)
    assert not (target / "blobs").exists()  # no byte of a blob on the target's disk
    target_settings = Settings(
        data_dir=target,
        database_url=pg_url,
        trash_retention="1h",
        **s3_settings,  # type: ignore[arg-type]
        **GENEROUS,
    )
    asyncio.run(assert_serves_everything(target_settings, made))
    assert not (target / "blobs").exists()


def _archived_before(sha: str, stem: bytes) -> bytes:
    """`stem` and a number, whose blob is archived before the blob `sha` (blobs go by name)."""
    for number in itertools.count():
        data = stem + b"%d\n" % number
        if hashlib.sha256(data).hexdigest() < sha:
            return data
    raise AssertionError("unreachable")


MESSAGE = {"corrupt": "not to its name", "truncated": "the archive is truncated"}


@pytest.mark.parametrize("failure", list(MESSAGE))
async def test_a_failed_restore_into_s3_removes_only_the_objects_it_created(
    tmp_path: Path,
    pg_url: str,
    s3_settings: dict[str, str],
    s3_server: SeaweedS3,
    failure: str,
) -> None:
    """As on disk: the objects that were in the bucket stay, those the restore wrote go again,
    and a multipart upload cut short (a truncated archive) or refused (its bytes are not its
    name) leaves no temp object and no upload open."""
    settings = Settings(
        data_dir=tmp_path / "target",
        database_url=pg_url,
        auto_migrate=True,
        s3_part_size_bytes=5 * MiB,
        **s3_settings,  # type: ignore[arg-type]
        **GENEROUS,
    )
    prefix, large_sha = s3_settings["s3_prefix"], hashlib.sha256(LARGE).hexdigest()
    survivor = _archived_before(large_sha, b"already in the bucket ")
    written = _archived_before(large_sha, b"only in the archive ")
    members = sample((survivor, written, LARGE))
    if failure == "corrupt":
        raw = tar_bytes(plain([(n, LARGE[::-1] if d == LARGE else d) for n, d in members]))
    else:
        full = tar_bytes(plain(members))
        raw = full[: full.index(LARGE[:4096]) + 5 * MiB + 2000]  # a part sent, the rest cut
    archive = tmp_path / "broken.tar"
    archive.write_bytes(raw)
    kept = S3Object(s3_server, f"{prefix}blobs/{hashlib.sha256(survivor).hexdigest()}")
    kept.write_bytes(survivor)

    container = build_container(settings)
    await open_resources(container)
    try:
        with pytest.raises(BackupError, match=MESSAGE[failure]):
            await _restore(settings, container, archive)
    finally:
        await close_resources(container)
    assert s3_server.keys(prefix) == [kept.key]
    assert s3_server.multipart_uploads(prefix) == []
    assert kept.read_bytes() == survivor
    rows = await dump(pg_url)
    assert all(rows[table] == [] for table in rows)
    assert not settings.blob_dir.exists()


class _NearlyFull(DiskBlobStore):
    """A blob store with room for `room` bytes beyond the margin."""

    def __init__(self, root: Path, room: int) -> None:
        super().__init__(root)
        self.room = room

    async def free_bytes(self) -> int | None:
        return FREE_SPACE_MARGIN + self.room


async def test_a_blob_larger_than_the_free_space_is_refused_before_it_is_written(
    tmp_path: Path,
) -> None:
    settings = Settings(data_dir=tmp_path / "target", **GENEROUS)
    small, large = b"small\n", b"large\n" * 1000
    archive = tmp_path / "fwb.tar"
    archive.write_bytes(tar_bytes(plain(sample((small, large)))))
    container = build_container(settings)
    await open_resources(container)
    try:
        with pytest.raises(
            BackupError,
            match=rf"blobs/\w+ is {len(large)} bytes, but the blob store has "
            rf"{FREE_SPACE_MARGIN + 100} bytes free",
        ):
            await _restore(
                settings,
                container,
                archive,
                blob_store=_NearlyFull(settings.blob_dir, room=100),
            )
    finally:
        await close_resources(container)
    assert blob_files(settings.data_dir) == []
    assert staged_files(settings.blob_dir / ".tmp") == []
    rows = await dump(settings.resolved_database_url)
    assert all(rows[table] == [] for table in rows)


def test_the_secret_is_in_place_before_the_commit_and_put_back_if_it_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, target = tmp_path / "source", tmp_path / "target"
    asyncio.run(_two_files(source))
    archive = tmp_path / "fwb.tar"
    assert invoke("create", "--out", str(archive), FWB_DATA_DIR=str(source)).exit_code == 0

    async def start_once() -> None:
        async with serve(Settings(data_dir=target, **GENEROUS), key=None):
            pass  # the target's own generated secret, and its bootstrap admin key

    asyncio.run(start_once())
    own_secret = (target / "secret.key").read_bytes()
    archived_secret = (source / "secret.key").read_bytes()
    assert own_secret != archived_secret
    real = backup_restore.restore_tables
    seen_before_commit: list[bytes] = []

    async def commit_fails(*args: Any, before_commit: Any = None, **kwargs: Any) -> None:
        async def install_then_fail() -> None:
            await before_commit()
            seen_before_commit.append((target / "secret.key").read_bytes())
            raise BackupError("the commit failed")

        await real(*args, before_commit=install_then_fail, **kwargs)

    monkeypatch.setattr(backup_restore, "restore_tables", commit_fails)
    failed = invoke("restore", str(archive), FWB_DATA_DIR=str(target))
    assert failed.exit_code == 1
    assert failed.output.strip() == "error: the commit failed"
    assert seen_before_commit == [archived_secret]
    assert (target / "secret.key").read_bytes() == own_secret  # put back
    assert stat.S_IMODE((target / "secret.key").stat().st_mode) == 0o600
    assert (target / "admin.key").exists()
    assert blob_files(target) == []
    assert sorted(p.name for p in target.iterdir() if p.name.startswith(".")) == []

    monkeypatch.undo()
    restored = invoke("restore", str(archive), FWB_DATA_DIR=str(target))
    assert restored.exit_code == 0, restored.output
    assert (target / "secret.key").read_bytes() == archived_secret


def _broken_ledger(*_: object, **__: object) -> sqlite3.Connection:
    raise sqlite3.OperationalError("disk I/O error")


@pytest.mark.parametrize(
    ("command", "env", "message"),
    [
        (
            "create",
            {"FWB_SECRET_KEY": "short"},
            "filewallball: invalid setting: FWB_SECRET_KEY: String should have at least 32"
            " characters",
        ),
        (
            "restore",
            {"FWB_DATABASE_URL": "postgresql+asyncpg://nobody@127.0.0.1:1/none"},
            "error: migrating the target database failed: database at 127.0.0.1:1: ",
        ),
        ("verify", {}, "error: the scratch ledger in .* failed: disk I/O error"),
    ],
)
def test_expected_failures_are_one_error_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    command: str,
    env: dict[str, str],
    message: str,
) -> None:
    archive = tmp_path / "fwb.tar"
    archive.write_bytes(tar_bytes(plain(sample())))
    monkeypatch.setattr(backup_check.sqlite3, "connect", _broken_ledger)
    args = ["--out", str(tmp_path / "new.tar")] if command == "create" else [str(archive)]
    result = invoke(command, *args, FWB_DATA_DIR=str(tmp_path / "data"), **env)
    # A bad setting is a usage error (2); a failure of the work itself is 1.
    assert result.exit_code == (2 if "invalid setting" in message else 1)
    assert result.exception is None or isinstance(result.exception, SystemExit)
    [line] = result.output.splitlines()
    assert re.match(message, line), line


def _cronjob_script(backups: Path) -> str:
    [container] = yaml.safe_load(CRONJOB.read_text())["spec"]["jobTemplate"]["spec"]["template"][
        "spec"
    ]["containers"]
    script: str = container["command"][-1]
    assert container["command"][:2] == ["/bin/sh", "-ec"]
    return script.replace("/backups", str(backups))


@pytest.mark.parametrize("verify_status", [0, 1])
def test_the_cronjob_renames_an_archive_that_fails_verification(
    tmp_path: Path, verify_status: int
) -> None:
    """The CronJob's script, run with a stand-in `filewallball` (create writes, verify exits
    with `verify_status`): a failed archive must not keep the name of a good one."""
    backups, bin_dir = tmp_path / "backups", tmp_path / "bin"
    backups.mkdir()
    bin_dir.mkdir()
    fake = bin_dir / "filewallball"
    fake.write_text(
        "#!/bin/sh\n"
        'if [ "$2" = create ]; then for a; do last=$a; done; echo archive > "$last"; exit 0; fi\n'
        f"exit {verify_status}\n"
    )
    fake.chmod(0o755)
    ran = subprocess.run(
        ["/bin/sh", "-ec", _cronjob_script(backups)],
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    [archive] = list(backups.iterdir())
    if verify_status == 0:
        assert ran.returncode == 0, ran.stderr
        assert re.fullmatch(r"filewallball-\d{8}T\d{6}Z\.tar", archive.name)
    else:
        assert ran.returncode == 1
        assert re.fullmatch(r"filewallball-\d{8}T\d{6}Z\.tar\.unverified", archive.name)
        assert "failed verification" in ran.stderr
