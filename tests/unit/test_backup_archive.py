"""Backup archives on disk: the streaming writer, and verification refusing hostile archives.

The archives here are built by hand (no database): a small consistent one, and variants of it
that an attacker or a broken disk could produce. Each must be refused with a message that says
what is wrong.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import stat
import tarfile
import tracemalloc
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from filewallball.adapters.sql import head_revision
from filewallball.backup import check as backup_check
from filewallball.backup.format import (
    BLOB_INDEX,
    HEADER,
    MANIFEST,
    MAX_HEADER_BYTES,
    MAX_SECRET_BYTES,
    SECRET,
    SKIPPED,
    TABLES,
    BackupError,
    Digest,
    Header,
    Manifest,
    MemberKind,
    SecretInfo,
    blob_member,
    table_member,
)
from filewallball.backup.reader import (
    MAX_EXTENDED_HEADER_BYTES,
    MAX_EXTENDED_HEADERS,
    ArchiveReader,
)
from filewallball.backup.rules import FREE_SPACE_MARGIN
from filewallball.backup.verify import verify_backup
from filewallball.backup.writer import ArchiveWriter
from filewallball.secret_file import SecretSource

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
    # Rows are checked against this version's tables: an older archive is not half-restored.
    "older schema revision": (
        lambda m: tar_bytes(
            plain(
                with_manifest(
                    _swap(m, HEADER, dict(m)[HEADER].replace(head_revision().encode(), b"0001"))
                )
            )
        ),
        r"schema revision '0001', made by an older FileWallBall \(test\).*restore it with "
        r"FileWallBall test, then upgrade",
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
    "oversized header": (
        lambda m: tar_bytes(plain([(HEADER, b" " * (MAX_HEADER_BYTES + 1)), *m[1:]])),
        rf"'header\.json' is {MAX_HEADER_BYTES + 1} bytes, over its limit",
    ),
    "oversized secret": (
        lambda m: tar_bytes(plain([*m[:-1], (SECRET, b"s" * (MAX_SECRET_BYTES + 1)), m[-1]])),
        rf"'secret\.key' is {MAX_SECRET_BYTES + 1} bytes, over its limit",
    ),
    "global PAX header": (
        lambda m: tar_bytes(
            [*plain(m[:1]), entry("pax_global_header", b"", type=tarfile.XGLTYPE), *plain(m[1:])]
        ),
        "a global PAX header: refused",
    ),
    "extended headers in a row": (
        lambda m: (
            tar_bytes(plain(m[:1]))[: _boundary(m, 1)]
            + b"".join(
                _header_block(tarfile.GNUTYPE_LONGNAME, 512) + b"x" * 511 + b"\0"
                for _ in range(MAX_EXTENDED_HEADERS + 1)
            )
            + tar_bytes(plain(m[1:]))
        ),
        f"more than {MAX_EXTENDED_HEADERS} extended tar headers in a row",
    ),
    "GNU sparse file": (
        lambda m: (
            tar_bytes(plain(m[:1]))[: _boundary(m, 1)]
            + _header_block(tarfile.GNUTYPE_SPARSE, 0, name=_blob_name(m))
            + tar_bytes(plain(m[1:]))
        ),
        "is a sparse file: refused",
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


def _header_block(kind: bytes, size: int, *, name: str = "././@LongLink") -> bytes:
    """One bare tar header block of type `kind` declaring `size` bytes of data."""
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, size
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")


BOMB_BYTES = 64 * 1024 * 1024  # what the header declares, and what follows it (zeros)


def _write_header_bomb(path: Path, kind: bytes, *, first: bool) -> None:
    """A .tar.gz (about 65 KB) holding an extended header of `kind` declaring BOMB_BYTES, with
    that many zero bytes after it: what tarfile alone would read whole into memory."""
    prefix = b"" if first else tar_bytes(plain(sample()[:1]))[: _boundary(sample(), 1)]
    zeros = bytes(1024 * 1024)
    with gzip.open(path, "wb") as out:
        out.write(prefix + _header_block(kind, BOMB_BYTES))
        for _ in range(BOMB_BYTES // len(zeros)):
            out.write(zeros)
        out.write(bytes(2 * tarfile.BLOCKSIZE))


@pytest.mark.parametrize(
    ("kind", "first"),
    [
        (tarfile.GNUTYPE_LONGNAME, False),
        (tarfile.GNUTYPE_LONGNAME, True),  # read by tarfile while the archive is opened
        (tarfile.GNUTYPE_LONGLINK, False),
        (tarfile.XHDTYPE, False),
        (tarfile.SOLARIS_XHDTYPE, False),
    ],
)
async def test_an_oversized_extended_header_is_refused_before_it_is_read(
    tmp_path: Path, kind: bytes, first: bool
) -> None:
    archive = tmp_path / "bomb.tar.gz"
    _write_header_bomb(archive, kind, first=first)
    assert archive.stat().st_size < 1024 * 1024
    tracemalloc.start()
    try:
        with pytest.raises(BackupError) as refused:
            await verify_backup(archive)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 1024 * 1024, f"{peak} bytes held while refusing a {BOMB_BYTES}-byte header"
    assert f"extended tar header (type {kind.decode()!r}) of {BOMB_BYTES} bytes" in str(
        refused.value
    )
    assert f"over the limit of {MAX_EXTENDED_HEADER_BYTES}" in str(refused.value)


async def test_long_names_within_the_limits_are_read(tmp_path: Path) -> None:
    """GNU long names and PAX headers as such are fine: only oversized ones are refused."""
    members = sample()
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
            for info, data in plain(members):
                if info.name == HEADER:
                    info.uname = "u" * 200  # a PAX record in PAX; ignored in GNU
                tar.addfile(info, io.BytesIO(data))
        assert (await verified(tmp_path, buffer.getvalue(), f"f{fmt}.tar")).blobs == 2


@pytest.mark.parametrize(("compress", "name"), [(bz2.compress, "bzip2"), (lzma.compress, "xz")])
async def test_only_plain_and_gzip_archives_are_read(
    tmp_path: Path, compress: Callable[[bytes], bytes], name: str
) -> None:
    raw = tar_bytes(plain(sample()))
    with pytest.raises(BackupError, match=f"is compressed with {name}: only .tar and .tar.gz"):
        await verified(tmp_path, compress(raw), "backup.tar.gz")
    # gzip is told by its first bytes, not by the name.
    assert (await verified(tmp_path, gzip.compress(raw), "backup.tar")).blobs == 2


async def test_members_beyond_the_small_limits_stream(tmp_path: Path) -> None:
    """Only header, manifest and secret are held whole: a blob larger than all of their limits
    (and than the reader's chunk) verifies, and is read a chunk at a time."""
    big = os.urandom(2 * 1024 * 1024 + 3)
    members = sample((big, b"small\n"))
    manifest = await verified(tmp_path, tar_bytes(plain(members)))
    assert manifest.blob_bytes == len(big) + len(b"small\n")
    path = tmp_path / "stream.tar"
    path.write_bytes(tar_bytes(plain(members)))
    async with ArchiveReader(path) as reader:
        async for member in reader.members():
            if member.size == len(big):
                sizes = [len(chunk) async for chunk in member.chunks()]
                assert len(sizes) > 1 and max(sizes) < len(big) and sum(sizes) == len(big)
            else:
                async for _ in member.chunks():
                    pass


async def test_a_member_larger_than_the_free_space_is_refused_before_it_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    members = sample()
    blobs_table = dict(members)[table_member("blobs")]
    seen: list[Path] = []

    def free_bytes(path: Path) -> int:
        seen.append(path)
        return FREE_SPACE_MARGIN + len(blobs_table) - 1  # one byte short for the first table

    monkeypatch.setattr(backup_check, "free_bytes", free_bytes)
    archive = tmp_path / "in" / "backup.tar"
    archive.parent.mkdir()
    archive.write_bytes(tar_bytes(plain(members)))
    with pytest.raises(
        BackupError,
        match=rf"tables/blobs\.jsonl is {len(blobs_table)} bytes, but the staging directory "
        rf".* has {len(blobs_table) - 1 + FREE_SPACE_MARGIN} bytes free",
    ):
        await verify_backup(archive)
    assert seen and all(path.parent == archive.parent for path in seen)
    assert _tree(tmp_path) == [archive.parent, archive]


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


async def test_a_file_appearing_at_the_last_moment_is_not_overwritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No check-then-rename: the file appears after any check could run (exists() says no)."""
    path = tmp_path / "out.tar"
    writer = await ArchiveWriter.create(path, mtime=0)
    await writer.add_bytes("header.json", b"{}")
    path.write_bytes(b"another backup, written meanwhile")
    monkeypatch.setattr(Path, "exists", lambda self: False)
    with pytest.raises(BackupError, match="appeared while the backup was written"):
        await writer.commit()
    monkeypatch.undo()
    await writer.abort()
    assert path.read_bytes() == b"another backup, written meanwhile"
    assert _tree(tmp_path) == [path]  # the temp file is gone
