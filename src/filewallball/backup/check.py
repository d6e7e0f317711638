"""Checking an archive as it streams by, and against its manifest once it has been read whole."""

# Members other than blobs are spooled into a private staging directory (hashed on the way);
# blobs are handled by the caller (hashed and dropped by verify, written to the blob store by
# restore) and recorded in a ledger: a SQLite file in the staging directory, so memory stays flat
# however many blobs an archive holds. A restore also notes there the blobs it created (the only
# ones it may delete again after a failure).

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import anyio
import anyio.to_thread

from filewallball.adapters.sql import head_revision, known_revisions
from filewallball.backup.format import (
    BLOB_INDEX,
    BLOB_PREFIX,
    HEADER,
    SECRET,
    SKIPPED,
    TABLES,
    BackupError,
    Digest,
    Header,
    Manifest,
    MemberKind,
    is_sha256,
    load_object,
    secret_fingerprint,
    table_member,
)
from filewallball.backup.reader import Member
from filewallball.backup.rows import decode_row, numbered_lines, primary_key
from filewallball.backup.rules import check_revision, check_room
from filewallball.secret_file import SecretSource

_LEDGER = """
CREATE TABLE members (sha TEXT PRIMARY KEY, size INTEGER NOT NULL);
CREATE TABLE indexed (sha TEXT PRIMARY KEY, size INTEGER NOT NULL);
CREATE TABLE blob_rows (sha TEXT PRIMARY KEY, refcount INTEGER NOT NULL, refs INTEGER NOT NULL);
CREATE TABLE row_keys (tbl TEXT NOT NULL, key TEXT NOT NULL, PRIMARY KEY (tbl, key));
CREATE TABLE created (sha TEXT PRIMARY KEY);
"""


class ArchiveCheck:
    """What was read of one archive, and whether it is whole, consistent and as listed."""

    def __init__(self, staging: Path) -> None:
        self._staging = staging
        # Autocommit, no journal: the ledger is scratch, thrown away with the staging directory.
        self._ledger = sqlite3.connect(
            staging / "ledger.sqlite", isolation_level=None, check_same_thread=False
        )
        self._ledger.executescript("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;" + _LEDGER)
        self.header: Header | None = None
        self.manifest: Manifest | None = None
        self._digests: dict[str, Digest] = {}
        self.blobs = 0
        self.blob_bytes = 0

    def close(self) -> None:
        self._ledger.close()

    def expect(self, member: Member) -> None:
        """The order and uniqueness of members: header first, nothing after the manifest."""
        if self.manifest is not None:
            raise BackupError(f"member {member.name!r} follows manifest.json: refused")
        if self.header is None and member.kind is not MemberKind.HEADER:
            raise BackupError(
                f"the archive starts with {member.name!r}, not header.json: "
                "not a FileWallBall backup"
            )
        if member.kind is not MemberKind.BLOB and (
            member.name in self._digests or (member.kind is MemberKind.HEADER and self.header)
        ):
            raise BackupError(f"member {member.name!r} appears twice: refused")

    async def read_header(self, member: Member) -> Header:
        raw = await self._read_small(member)
        header = Header.from_json(load_object(raw, HEADER), member=HEADER)
        check_revision(
            header.schema_revision,
            app_version=header.app_version,
            head=head_revision(),
            known=known_revisions(),
        )
        self.header = header
        return header

    async def read_manifest(self, member: Member) -> Manifest:
        self.manifest = Manifest.from_json(await self._read_small(member, record=False))
        return self.manifest

    async def spool(self, member: Member) -> None:
        """Copy a table, index or secret member into the staging directory, hashing it.

        Refused before a byte is written when its declared size (which bounds what is read of
        it) would leave the staging directory's disk with less than the margin free.
        """
        free = await anyio.to_thread.run_sync(free_bytes, self._staging)
        check_room(
            member.name, member.size, free=free, where=f"the staging directory {self._staging}"
        )
        digest = hashlib.sha256()
        handle = await anyio.to_thread.run_sync(self.path_of(member.name).open, "xb")
        try:
            async for chunk in member.chunks():
                digest.update(chunk)
                await anyio.to_thread.run_sync(handle.write, chunk)
        finally:
            await anyio.to_thread.run_sync(handle.close)
        self._digests[member.name] = Digest(size=member.size, sha256=digest.hexdigest())

    async def record_blob(self, name: str, digest: Digest) -> None:
        """A blob read whole: its bytes must hash to its name, and it must be new."""
        sha = name.removeprefix(BLOB_PREFIX)
        if digest.sha256 != sha:
            raise BackupError(
                f"{name}: its bytes hash to {digest.sha256}, not to its name "
                "(the archive is corrupt or was tampered with)"
            )
        try:
            await anyio.to_thread.run_sync(
                self._ledger.execute, "INSERT INTO members VALUES (?, ?)", (sha, digest.size)
            )
        except sqlite3.IntegrityError:
            raise BackupError(f"member {name!r} appears twice: refused") from None
        self.blobs += 1
        self.blob_bytes += digest.size

    async def note_created(self, sha: str) -> None:
        """A blob a restore wrote where none was before: one it may delete after a failure."""
        await anyio.to_thread.run_sync(
            self._ledger.execute, "INSERT OR IGNORE INTO created VALUES (?)", (sha,)
        )

    def created_blobs(self) -> list[str]:
        """The blobs noted as created (never one that was in the blob store before)."""
        return [sha for (sha,) in self._ledger.execute("SELECT sha FROM created")]

    def path_of(self, name: str) -> Path:
        # `name` passed classify(): one of the format's fixed names, never a path of its own.
        return self._staging / name.replace("/", "__")

    def secret(self) -> bytes | None:
        path = self.path_of(SECRET)
        return path.read_bytes() if path.exists() else None

    async def finish(self) -> Manifest:
        """Check everything read against the manifest; the manifest, or BackupError."""
        return await anyio.to_thread.run_sync(self._finish)

    def _finish(self) -> Manifest:
        manifest, header = self.manifest, self.header
        if manifest is None or header is None:
            raise BackupError("the archive is incomplete: no manifest.json at its end (truncated?)")
        if manifest.header.to_json() != header.to_json():
            raise BackupError("manifest.json and header.json describe different backups")
        if header.api_keys != manifest.rows["api_keys"]:
            raise BackupError("header.json and manifest.json disagree on the number of API keys")
        self._check_members(manifest, header)
        self._check_index()
        if (self.blobs, self.blob_bytes) != (manifest.blobs, manifest.blob_bytes):
            raise BackupError(
                f"the archive holds {self.blobs} blobs of {self.blob_bytes} bytes, the manifest "
                f"lists {manifest.blobs} of {manifest.blob_bytes}"
            )
        for table in TABLES:
            rows = self._check_table(table)
            if rows != manifest.rows[table]:
                raise BackupError(
                    f"{table_member(table)} holds {rows} rows, the manifest lists "
                    f"{manifest.rows[table]}"
                )
        self._check_references()
        skipped = self._count_lines(SKIPPED)
        if skipped != manifest.skipped:
            raise BackupError(f"{SKIPPED} lists {skipped} files, the manifest {manifest.skipped}")
        secret = self.secret()
        if secret is not None and secret_fingerprint(secret.strip()) != header.secret.fingerprint:
            raise BackupError("secret.key does not match the fingerprint in the header")
        return manifest

    def _check_members(self, manifest: Manifest, header: Header) -> None:
        required = {HEADER, BLOB_INDEX, SKIPPED, *(table_member(t) for t in TABLES)}
        if header.secret.source is SecretSource.FILE:
            required.add(SECRET)
        for name in sorted(required - manifest.members.keys()):
            raise BackupError(f"manifest.json does not list {name}")
        for name in sorted(manifest.members.keys() - required):
            raise BackupError(f"manifest.json lists {name}, which this backup cannot hold")
        for name, listed in sorted(manifest.members.items()):
            seen = self._digests.get(name)
            if seen is None:
                raise BackupError(f"{name} is listed in manifest.json but missing")
            if seen != listed:
                raise BackupError(
                    f"{name} does not match manifest.json (size {seen.size} vs {listed.size}, "
                    f"SHA-256 {seen.sha256} vs {listed.sha256}): the archive is corrupt"
                )
        for name in sorted(self._digests.keys() - manifest.members.keys()):
            raise BackupError(f"member {name!r} is not listed in manifest.json")

    def _check_index(self) -> None:
        for number, line in self._numbered(BLOB_INDEX):
            entry = load_object(line, f"{BLOB_INDEX} line {number}")
            sha, size = entry.get("sha256"), entry.get("size")
            if not is_sha256(sha) or not isinstance(size, int) or isinstance(size, bool):
                raise BackupError(f"{BLOB_INDEX} line {number}: needs a sha256 and a size")
            try:
                self._ledger.execute("INSERT INTO indexed VALUES (?, ?)", (sha, size))
            except sqlite3.IntegrityError:
                raise BackupError(f"{BLOB_INDEX} line {number}: lists {sha} twice") from None
        self._none(
            "SELECT sha FROM members EXCEPT SELECT sha FROM indexed",
            "blobs/{} is not listed in blob-index.jsonl",
        )
        self._none(
            "SELECT sha FROM indexed EXCEPT SELECT sha FROM members",
            "blobs/{} is listed in blob-index.jsonl but missing from the archive",
        )
        self._none(
            "SELECT m.sha FROM members m JOIN indexed i ON i.sha = m.sha WHERE i.size != m.size",
            "blobs/{} does not have the size blob-index.jsonl lists",
        )

    def _check_table(self, table: str) -> int:
        member = table_member(table)
        rows = 0
        for number, line in self._numbered(member):
            row = decode_row(table, line, where=f"{member} line {number}")
            rows += 1
            key = row[primary_key(table)]
            try:
                self._ledger.execute("INSERT INTO row_keys VALUES (?, ?)", (table, str(key)))
            except sqlite3.IntegrityError:
                raise BackupError(f"{member} line {number}: a second row {key!r}") from None
            if table == "blobs":
                self._ledger.execute(
                    "INSERT INTO blob_rows VALUES (?, ?, 0)", (row["sha256"], row["refcount"])
                )
            elif table == "files":
                found = self._ledger.execute(
                    "SELECT size FROM members WHERE sha = ?", (row["sha256"],)
                ).fetchone()
                if found is None:
                    raise BackupError(
                        f"{member} line {number}: the bytes of file {row['id']} "
                        f"(blobs/{row['sha256']}) are not in the archive"
                    )
                if found[0] != row["size"]:
                    raise BackupError(
                        f"{member} line {number}: file {row['id']} has {row['size']} bytes, "
                        f"its blob {found[0]}"
                    )
                self._ledger.execute(
                    "UPDATE blob_rows SET refs = refs + 1 WHERE sha = ?", (row["sha256"],)
                )
        return rows

    def _check_references(self) -> None:
        self._none(
            "SELECT sha FROM members EXCEPT SELECT sha FROM blob_rows",
            "blobs/{} is in the archive but not in tables/blobs.jsonl",
        )
        self._none(
            "SELECT sha FROM blob_rows EXCEPT SELECT sha FROM members",
            "tables/blobs.jsonl lists blob {}, which is not in the archive",
        )
        self._none(
            "SELECT sha FROM blob_rows WHERE refcount != refs",
            "tables/blobs.jsonl: the reference count of blob {} does not match the files",
        )

    def _none(self, query: str, message: str) -> None:
        found = self._ledger.execute(query + " LIMIT 1").fetchone()
        if found is not None:
            raise BackupError(message.format(found[0]))

    def _numbered(self, name: str) -> Iterator[tuple[int, bytes]]:
        """The numbered lines of a staged member (none when it is missing)."""
        path = self.path_of(name)
        if path.exists():
            with path.open("rb") as handle:
                yield from numbered_lines(handle, name)

    def _count_lines(self, name: str) -> int:
        count = 0
        for number, line in self._numbered(name):
            entry = load_object(line, f"{name} line {number}")
            if not isinstance(entry.get("file_id"), str) or not is_sha256(entry.get("sha256")):
                raise BackupError(f"{name} line {number}: needs a file_id and a sha256")
            count += 1
        return count

    async def _read_small(self, member: Member, *, record: bool = True) -> bytes:
        """A member bounded by its kind's limit (checked by the reader), read whole."""
        raw = b"".join([chunk async for chunk in member.chunks()])
        if record:
            self._digests[member.name] = Digest(
                size=len(raw), sha256=hashlib.sha256(raw).hexdigest()
            )
        return raw


def free_bytes(path: Path) -> int | None:
    """The bytes free on the filesystem holding `path`, when it can tell."""
    try:
        return int(shutil.disk_usage(path).free)
    except OSError:
        return None
