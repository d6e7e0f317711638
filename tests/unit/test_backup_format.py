"""The backup format's rules (backup/format.py, backup/rules.py): member names, header and
manifest, secrets, and what counts as an empty restore target."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from filewallball.backup.format import (
    FORMAT_VERSION,
    BackupError,
    Digest,
    Header,
    Manifest,
    MemberKind,
    SecretInfo,
    classify,
    secret_fingerprint,
)
from filewallball.backup.rules import (
    FREE_SPACE_MARGIN,
    SecretAction,
    TargetContents,
    check_revision,
    check_room,
    plan_secret,
)
from filewallball.secret_file import SecretSource

SHA = "ab" * 32


def _header(**changes: object) -> Header:
    values: dict[str, object] = {
        "created_at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        "source_backend": "sqlite",
        "schema_revision": "0004",
        "app_version": "0.1.0",
        "secret": SecretInfo(SecretSource.FILE, secret_fingerprint(b"s" * 64)),
        "api_keys": 2,
        **changes,
    }
    return Header(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("header.json", MemberKind.HEADER),
        ("manifest.json", MemberKind.MANIFEST),
        ("blob-index.jsonl", MemberKind.BLOB_INDEX),
        ("skipped.jsonl", MemberKind.SKIPPED),
        ("secret.key", MemberKind.SECRET),
        ("tables/files.jsonl", MemberKind.TABLE),
        ("tables/audit_log.jsonl", MemberKind.TABLE),
        (f"blobs/{SHA}", MemberKind.BLOB),
    ],
)
def test_the_format_names_its_members(name: str, kind: MemberKind) -> None:
    assert classify(name) is kind


@pytest.mark.parametrize(
    "name",
    [
        "../manifest.json",
        "/etc/passwd",
        "blobs/../../etc/passwd",
        f"blobs/{SHA.upper()}",
        f"blobs/{SHA[:-1]}",
        f"blobs/{SHA}/x",
        "tables/users.jsonl",
        "tables/../files.jsonl",
        "./header.json",
        "manifest.json/",
        "run.sh",
        "",
    ],
)
def test_any_other_name_is_refused(name: str) -> None:
    with pytest.raises(BackupError, match="not part of a FileWallBall backup"):
        classify(name)


def test_a_member_must_leave_the_margin_free_where_it_is_written() -> None:
    check_room("blobs/x", 100, free=FREE_SPACE_MARGIN + 100, where="the blob store")
    check_room("blobs/x", 10**15, free=None, where="the blob store")  # cannot tell: allowed
    for free in (FREE_SPACE_MARGIN + 99, 50, 0):
        with pytest.raises(BackupError, match=r"blobs/x is 100 bytes, but the blob store has"):
            check_room("blobs/x", 100, free=free, where="the blob store")


def test_only_archives_of_this_schema_revision_are_accepted() -> None:
    known = {"0001", "0002", "0003"}
    check_revision("0003", app_version="0.3.0", head="0003", known=known)
    with pytest.raises(
        BackupError,
        match=r"revision '0001', made by an older FileWallBall \(0\.1\.0\); this one reads "
        r"revision '0003' only: restore it with FileWallBall 0\.1\.0, then upgrade",
    ):
        check_revision("0001", app_version="0.1.0", head="0003", known=known)
    with pytest.raises(BackupError, match=r"'0009' is unknown here: .* newer FileWallBall \(0\.9"):
        check_revision("0009", app_version="0.9.0", head="0003", known=known)


def test_manifest_round_trips() -> None:
    manifest = Manifest(
        header=_header(),
        rows={"blobs": 1, "files": 2, "api_keys": 2, "ip_rules": 0, "audit_log": 9},
        blobs=1,
        blob_bytes=5,
        skipped=0,
        members={"header.json": Digest(size=10, sha256=SHA)},
    )
    assert Manifest.from_json(manifest.to_json()) == manifest


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": FORMAT_VERSION + 1}, "format version 2 is not supported"),
        ({"format": "tarball"}, "not a FileWallBall backup"),
        ({"created_at": "yesterday"}, "created_at is not an ISO 8601 date-time"),
        ({"created_at": "2026-01-02T03:04:05"}, "created_at has no time zone"),
        ({"source_backend": "mysql"}, "unknown source backend"),
        ({"api_keys": -1}, "api_keys must be a non-negative integer"),
        ({"api_keys": True}, "api_keys must be a non-negative integer"),
        ({"secret": {"source": "vault"}}, "secret.source"),
        ({"secret": {"source": "file", "fingerprint": "xyz"}}, "fingerprint is malformed"),
        ({"members": {"../x": {"size": 1, "sha256": SHA}}}, "not part of a FileWallBall"),
        ({"members": {f"blobs/{SHA}": {"size": 1, "sha256": SHA}}}, "which it cannot list"),
        ({"members": {"header.json": {"size": 1, "sha256": "nope"}}}, "SHA-256 of header.json"),
        ({"counts": {}}, "rows"),
    ],
)
def test_a_malformed_manifest_is_refused_with_the_reason(
    change: dict[str, object], message: str
) -> None:
    manifest = Manifest(
        header=_header(),
        rows={"blobs": 0, "files": 0, "api_keys": 0, "ip_rules": 0, "audit_log": 0},
        blobs=0,
        blob_bytes=0,
        skipped=0,
    )
    data = {**json.loads(manifest.to_json()), **change}
    with pytest.raises(BackupError, match=message):
        Manifest.from_json(json.dumps(data).encode())


@pytest.mark.parametrize("raw", [b"", b"[]", b"{", b"\xff\xfe", b'"text"'])
def test_a_manifest_that_is_not_a_json_object_is_refused(raw: bytes) -> None:
    with pytest.raises(BackupError, match=r"manifest\.json"):
        Manifest.from_json(raw)


FILE_A = SecretInfo(SecretSource.FILE, secret_fingerprint(b"a" * 64))
FILE_B = SecretInfo(SecretSource.FILE, secret_fingerprint(b"b" * 64))
ENV_A = SecretInfo(SecretSource.ENV, FILE_A.fingerprint)
ENV_B = SecretInfo(SecretSource.ENV, FILE_B.fingerprint)
NONE = SecretInfo(SecretSource.NONE)


@pytest.mark.parametrize(
    ("archive", "target", "keys", "action"),
    [
        (FILE_A, FILE_A, 3, SecretAction.KEEP),  # same secret already
        (FILE_A, ENV_A, 3, SecretAction.KEEP),  # FWB_SECRET_KEY set to the file's value
        (ENV_A, ENV_A, 3, SecretAction.KEEP),
        (FILE_A, NONE, 3, SecretAction.INSTALL),  # a fresh data directory
        (FILE_A, FILE_B, 3, SecretAction.INSTALL),  # a started, still empty instance
        (FILE_A, ENV_B, 0, SecretAction.KEEP),  # no key needs the secret
        (NONE, ENV_B, 3, SecretAction.KEEP),  # nothing known to compare
    ],
)
def test_the_server_secret_plan(
    archive: SecretInfo, target: SecretInfo, keys: int, action: SecretAction
) -> None:
    assert plan_secret(archive, keys=keys, target=target, allow_mismatch=False) is action


@pytest.mark.parametrize(
    ("archive", "target", "message"),
    [
        (FILE_A, ENV_B, "FWB_SECRET_KEY differs"),
        (ENV_A, ENV_B, "has another FWB_SECRET_KEY"),
        (ENV_A, NONE, "has no secret yet"),
        (ENV_A, FILE_B, "set FWB_SECRET_KEY to the source's value"),
    ],
)
def test_keys_that_could_not_authenticate_are_refused_unless_allowed(
    archive: SecretInfo, target: SecretInfo, message: str
) -> None:
    with pytest.raises(BackupError, match=message):
        plan_secret(archive, keys=1, target=target, allow_mismatch=False)
    allowed = plan_secret(archive, keys=1, target=target, allow_mismatch=True)
    assert allowed is SecretAction.MISMATCH


def test_fingerprints_tell_secrets_apart_without_showing_them() -> None:
    fingerprint = secret_fingerprint(b"a" * 64)
    assert fingerprint == secret_fingerprint(b"a" * 64) != secret_fingerprint(b"b" * 64)
    assert len(fingerprint) == 16 and "a" * 8 not in fingerprint


def test_an_empty_or_just_started_target_may_be_restored_into() -> None:
    TargetContents().check_empty()
    TargetContents(
        keys=1, bootstrap_keys=1, audit_entries=1, bootstrap_audit_entries=1
    ).check_empty()


@pytest.mark.parametrize(
    ("contents", "found"),
    [
        (TargetContents(files=2, blobs=1), "files: 2, blob records: 1"),
        (TargetContents(ip_rules=1), "IP rules: 1"),
        (TargetContents(keys=2, bootstrap_keys=1), "API keys besides the bootstrap admin key: 1"),
        (
            TargetContents(audit_entries=3, bootstrap_audit_entries=1),
            "audit entries besides the bootstrap one: 2",
        ),
    ],
)
def test_a_target_in_use_is_refused(contents: TargetContents, found: str) -> None:
    with pytest.raises(BackupError, match=f"the target is not empty \\({found}"):
        contents.check_empty()
