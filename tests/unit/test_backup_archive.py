"""Backup archives on disk: the streaming writer, and verification refusing hostile archives.

The archives here are built by hand (no database): a small consistent one, and variants of it
that an attacker or a broken disk could produce. Each must be refused with a message that says
what is wrong.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from filewallball.adapters.backup_archive import ArchiveReader, ArchiveWriter
from filewallball.adapters.backup_restore import verify_backup
from filewallball.adapters.backup_sql import head_revision
from filewallball.domain.backup import (
    BLOB_INDEX,
    HEADER,
    MANIFEST,
    SKIPPED,
    TABLES,
    BackupError,
    Digest,
    Header,
    Manifest,
    MemberKind,
    SecretInfo,
    SecretSource,
    blob_member,
    table_member,
)

Members = list[tuple[str, bytes]]
WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
CONTENTS = (b"hello\n", b"world\n" * 1000, b"hello\n")
EXTRA_SHA = hashlib.sha256(b"extra").hexdigest()


def _line(value: dict[str, object]) -> bytes:
    return json.dumps(value).encode() + b"\n"


def sample(contents: tuple[bytes, ...] = CONTENTS) -> Members:
    """A small consistent archive's members, in order: files with duplicate contents."""
    distinct = sorted({hashlib.sha256(c).hexdigest(): c for c in contents}.items())
    files = [
        {
            "id": f"file{number:02d}",
            "filename": f"f{number}.txt",
            "size": len(data),
            "content_type": "text/plain",
            "sha256": hashlib.sha256(data).hexdigest(),
            "created_at": WHEN.isoformat(),
            "visibility": "private",
            "owner": "admin",
            "scan_status": "skipped",
            "thumbnail_status": "not_applicable",
        }
        for number, data in enumerate(contents)
    ]
    blob_rows = [
        {
            "sha256": sha,
            "refcount": sum(f["sha256"] == sha for f in files),
            "created_at": WHEN.isoformat(),
        }
        for sha, _ in distinct
    ]
    header = Header(
        created_at=WHEN,
        source_backend="sqlite",
        schema_revision=head_revision(),
        app_version="test",
        secret=SecretInfo(SecretSource.NONE),
        api_keys=0,
    )
    tables = {"blobs": blob_rows, "files": files}
    members: Members = [
        (HEADER, json.dumps(header.to_json()).encode()),
        *((blob_member(sha), data) for sha, data in distinct),
        *((table_member(t), b"".join(_line(row) for row in tables.get(t, []))) for t in TABLES),
        (BLOB_INDEX, b"".join(_line({"sha256": s, "size": len(d)}) for s, d in distinct)),
        (SKIPPED, b""),
    ]
    return with_manifest(members)


def with_manifest(members: Members) -> Members:
    """`members` (any old manifest dropped) and a manifest that lists them truthfully."""
    members = [(name, data) for name, data in members if name != MANIFEST]
    header = Header.from_json(json.loads(dict(members)[HEADER]), member=HEADER)
    listed = {
        name: Digest(size=len(data), sha256=hashlib.sha256(data).hexdigest())
        for name, data in members
        if not name.startswith("blobs/")
    }
    by_name = dict(members)
    blobs = [data for name, data in members if name.startswith("blobs/")]
    manifest = Manifest(
        header=header,
        rows={t: by_name.get(table_member(t), b"").count(b"\n") for t in TABLES},
        blobs=len(blobs),
        blob_bytes=sum(len(b) for b in blobs),
        skipped=by_name.get(SKIPPED, b"").count(b"\n"),
        members=listed,
    )
    return [*members, (MANIFEST, manifest.to_json())]


def entry(name: str, data: bytes = b"", **fields: object) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in fields.items():
        setattr(info, key, value)
    return info, data


def tar_bytes(entries: list[tuple[tarfile.TarInfo, bytes]], *, pax: bool = False) -> bytes:
    buffer = io.BytesIO()
    fmt = tarfile.PAX_FORMAT if pax else tarfile.GNU_FORMAT
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


def plain(members: Members) -> list[tuple[tarfile.TarInfo, bytes]]:
    return [entry(name, data) for name, data in members]


def _tree(path: Path) -> list[Path]:
    return sorted(path.rglob("*"))


async def verified(tmp_path: Path, raw: bytes, name: str = "backup.tar") -> Manifest:
    path = tmp_path / name
    path.write_bytes(raw)
    return await verify_backup(path)


async def test_a_consistent_archive_verifies(tmp_path: Path) -> None:
    manifest = await verified(tmp_path, tar_bytes(plain(sample())))
    assert manifest.rows["files"] == 3 and manifest.rows["blobs"] == 2
    assert manifest.blobs == 2 and manifest.blob_bytes == len(CONTENTS[0]) + len(CONTENTS[1])
    compressed = gzip.compress(tar_bytes(plain(sample())))
    assert (await verified(tmp_path, compressed, "backup.tar.gz")) == manifest


def _swap(members: Members, name: str, data: bytes) -> Members:
    return [(n, data if n == name else d) for n, d in members]


def _blob_name(members: Members, index: int = 0) -> str:
    return [n for n, _ in members if n.startswith("blobs/")][index]


def _files_row_for_missing_blob(members: Members) -> Members:
    """A files row whose blob is absent, with every sum and count made to agree."""
    ghost = hashlib.sha256(b"ghost").hexdigest()
    files = dict(members)[table_member("files")]
    extra = json.loads(files.splitlines()[0]) | {"id": "ghost", "sha256": ghost, "size": 5}
    return with_manifest(_swap(members, table_member("files"), files + _line(extra)))


def _boundary(members: Members, count: int) -> int:
    """Where the first `count` members end in a tar of these members."""
    return sum(512 + -(-len(data) // 512) * 512 for _, data in members[:count])


Hostile = Callable[[Members], bytes]

HOSTILE: dict[str, tuple[Hostile, str]] = {
    "path traversal": (
        lambda m: tar_bytes([*plain(m[:1]), entry("../../evil.sh", b"rm -rf /"), *plain(m[1:])]),
        r"'\.\./\.\./evil\.sh' points outside the archive",
    ),
    "absolute path": (
        lambda m: tar_bytes([*plain(m[:1]), entry("/etc/cron.d/evil", b"x"), *plain(m[1:])]),
        "points outside the archive",
    ),
    "traversal in a PAX path": (
        lambda m: tar_bytes([*plain(m[:1]), entry("blobs/" + "../" * 40 + "x", b"x")], pax=True),
        "points outside the archive",
    ),
    "symbolic link": (
        lambda m: tar_bytes(
            [
                *plain(m[:1]),
                entry(_blob_name(m), type=tarfile.SYMTYPE, linkname="/etc/passwd"),
            ]
        ),
        "is a symbolic link, not a plain file",
    ),
    "hard link": (
        lambda m: tar_bytes(
            [*plain(m[:1]), entry(_blob_name(m), type=tarfile.LNKTYPE, linkname="/etc/passwd")]
        ),
        "is a hard link",
    ),
    "device": (
        lambda m: tar_bytes([*plain(m[:1]), entry(_blob_name(m), type=tarfile.CHRTYPE)]),
        "is a character device",
    ),
    "directory": (
        lambda m: tar_bytes([*plain(m[:1]), entry("tables/files.jsonl", type=tarfile.DIRTYPE)]),
        "is a directory",
    ),
    "unknown member": (
        lambda m: tar_bytes([*plain(m[:1]), entry("run.sh", b"#!/bin/sh\n"), *plain(m[1:])]),
        "'run.sh': not part of a FileWallBall backup",
    ),
    "duplicate table": (
        lambda m: tar_bytes(plain([*m[:-1], (table_member("files"), b""), m[-1]])),
        r"'tables/files\.jsonl' appears twice",
    ),
    "duplicate blob": (
        lambda m: tar_bytes(plain([m[0], m[1], m[1], *m[2:]])),
        "appears twice",
    ),
    "blob whose bytes are not its name": (
        lambda m: tar_bytes(plain(_swap(m, _blob_name(m), b"HELLO\n"))),
        "its bytes hash to .*, not to its name",
    ),
    "blob not in the index": (
        lambda m: tar_bytes(
            plain(with_manifest([*m[:1], (blob_member(EXTRA_SHA), b"extra"), *m[1:]]))
        ),
        f"blobs/{EXTRA_SHA} is not listed in blob-index.jsonl",
    ),
    "wrong sum": (
        lambda m: tar_bytes(
            plain(
                _swap(
                    m,
                    table_member("files"),
                    dict(m)[table_member("files")].replace(b"f1.txt", b"f9.txt"),
                )
            )
        ),
        r"tables/files\.jsonl does not match manifest\.json .*: the archive is corrupt",
    ),
    "member not in the manifest": (
        lambda m: tar_bytes(plain([*m[:-1], ("secret.key", b"s" * 64), m[-1]])),
        r"'secret\.key' is not listed in manifest\.json",
    ),
    "member listed but missing": (
        lambda m: tar_bytes(plain([(n, d) for n, d in m if n != SKIPPED])),
        r"skipped\.jsonl is listed in manifest\.json but missing",
    ),
    "file without its blob": (
        lambda m: tar_bytes(plain(_files_row_for_missing_blob(m))),
        "the bytes of file ghost .* are not in the archive",
    ),
    "wrong refcount": (
        lambda m: tar_bytes(
            plain(
                with_manifest(
                    _swap(
                        m,
                        table_member("blobs"),
                        dict(m)[table_member("blobs")].replace(b'"refcount": 2', b'"refcount": 7'),
                    )
                )
            )
        ),
        "reference count of blob .* does not match",
    ),
    "bad row": (
        lambda m: tar_bytes(
            plain(
                with_manifest(
                    _swap(
                        m,
                        table_member("files"),
                        dict(m)[table_member("files")].replace(b'"size": 6', b'"size": "6"', 1),
                    )
                )
            )
        ),
        r"tables/files\.jsonl line 1: size is not a 64-bit integer",
    ),
    "overlong line": (
        lambda m: tar_bytes(
            plain(with_manifest(_swap(m, table_member("audit_log"), b"x" * (1024 * 1024 + 1))))
        ),
        r"tables/audit_log\.jsonl line 1: longer than 1048576 bytes",
    ),
    "key count hidden from the header": (
        lambda m: tar_bytes(
            plain(
                with_manifest(
                    _swap(m, HEADER, dict(m)[HEADER].replace(b'"api_keys": 0', b'"api_keys": 3'))
                )
            )
        ),
        "disagree on the number of API keys",
    ),
    "unknown format version": (
        lambda m: tar_bytes(
            plain(_swap(m, HEADER, dict(m)[HEADER].replace(b'"version": 1', b'"version": 2')))
        ),
        r"header\.json: backup format version 2 is not supported",
    ),
    "unknown schema revision": (
        lambda m: tar_bytes(
            plain(_swap(m, HEADER, dict(m)[HEADER].replace(head_revision().encode(), b"9999")))
        ),
        "schema revision '9999' is unknown here",
    ),
    "manifest disagreeing with the header": (
        lambda m: tar_bytes(
            plain(_swap(m, MANIFEST, dict(m)[MANIFEST].replace(b'"sqlite"', b'"postgresql"')))
        ),
        "describe different backups",
    ),
    "oversized manifest": (
        lambda m: tar_bytes(plain([*m[:-1], (MANIFEST, b" " * (1024 * 1024 + 1))])),
        r"'manifest\.json' is 1048577 bytes, over its limit",
    ),
    "member after the manifest": (
        lambda m: tar_bytes(plain([*m, (SKIPPED, b"")])),
        r"'skipped\.jsonl' follows manifest\.json",
    ),
    "no header first": (
        lambda m: tar_bytes(plain([*m[1:]])),
        "not header.json: not a FileWallBall backup",
    ),
    "no manifest": (
        lambda m: tar_bytes(plain(m[:-1])),
        r"incomplete: no manifest\.json at its end",
    ),
    "truncated inside a member": (
        lambda m: tar_bytes(plain(m))[:2000],
        "truncated",
    ),
    "truncated at a member boundary": (
        lambda m: tar_bytes(plain(m))[: _boundary(m, 3)],
        r"incomplete: no manifest\.json",
    ),
    "truncated gzip": (
        lambda m: gzip.compress(tar_bytes(plain(m)))[:300],
        "truncated",
    ),
    "not a tar": (
        lambda m: b"PK\x03\x04 a zip file, say" * 100,
        "not a readable tar archive",
    ),
    "empty file": (lambda m: b"", "not a readable tar archive"),
}


@pytest.mark.parametrize("case", HOSTILE)
async def test_a_hostile_or_broken_archive_is_refused(tmp_path: Path, case: str) -> None:
    build, message = HOSTILE[case]
    archive = tmp_path / "in" / "backup.tar"
    archive.parent.mkdir()
    archive.write_bytes(build(sample()))
    before = _tree(tmp_path)
    with pytest.raises(BackupError, match=message):
        await verify_backup(archive)
    # Nothing extracted anywhere, and the staging area is gone.
    assert _tree(tmp_path) == before


async def _chunks(*pieces: bytes) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


@pytest.mark.parametrize("name", ["out.tar", "out.tar.gz"])
async def test_the_writer_streams_members_and_renames_at_the_end(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    big = os.urandom(3 * 1024 * 1024 + 7)  # several chunks, not a multiple of 512
    writer = await ArchiveWriter.create(path, mtime=WHEN.timestamp())
    first = await writer.add_bytes("header.json", b"{}")
    second = await writer.add(
        f"blobs/{hashlib.sha256(big).hexdigest()}", _chunks(big), size=len(big)
    )
    assert not path.exists()  # nothing at the final path before commit
    await writer.commit()
    assert first == Digest(2, hashlib.sha256(b"{}").hexdigest())
    assert second == Digest(len(big), hashlib.sha256(big).hexdigest())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert _tree(tmp_path) == [path]
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    async with ArchiveReader(path) as reader:
        read = [
            (m.name, m.kind, b"".join([c async for c in m.chunks()]))
            async for m in reader.members()
        ]
    assert read == [
        ("header.json", MemberKind.HEADER, b"{}"),
        (f"blobs/{second.sha256}", MemberKind.BLOB, big),
    ]
    with tarfile.open(path) as tar:  # and tar(1)-compatible
        assert [m.name for m in tar.getmembers()] == [n for n, _, _ in read]


async def test_an_aborted_archive_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "out.tar"
    writer = await ArchiveWriter.create(path, mtime=0)
    with pytest.raises(BackupError, match="shrank while it was being copied"):
        await writer.add("header.json", _chunks(b"abc"), size=10)
    await writer.abort()
    assert _tree(tmp_path) == []
    writer = await ArchiveWriter.create(path, mtime=0)
    with pytest.raises(BackupError, match="grew while it was being copied"):
        await writer.add("header.json", _chunks(b"abc", b"def"), size=4)
    await writer.abort()
    assert _tree(tmp_path) == []


async def test_an_existing_file_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "out.tar"
    path.write_bytes(b"an older backup")
    with pytest.raises(BackupError, match="exists already"):
        await ArchiveWriter.create(path, mtime=0)
    assert path.read_bytes() == b"an older backup"
