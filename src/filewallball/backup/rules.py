"""What a restore may do: into an empty target, of this schema, with room, with a usable secret."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from filewallball.backup.format import BackupError, SecretInfo
from filewallball.secret_file import SecretSource

# Left free on the disks a restore or a verify writes to: a member whose declared size would
# eat into it is refused before a byte of it is written (a decompression bomb, or too small a
# disk, fails at once instead of filling the disk the service runs on).
FREE_SPACE_MARGIN = 64 * 1024 * 1024

# What a first start of the service creates (domain/access.py, AccessService.bootstrap): a target
# holding only these still counts as empty, and the archive's keys replace them.
BOOTSTRAP_KEY_NAME = "bootstrap-admin"
BOOTSTRAP_AUDIT_ACTION = "key.bootstrap"


def check_room(member: str, size: int, *, free: int | None, where: str) -> None:
    """BackupError when writing `size` bytes at `where` would leave less than the margin free.

    `free` is None when the storage cannot tell: then nothing is refused.
    """
    if free is not None and size > free - FREE_SPACE_MARGIN:
        raise BackupError(
            f"{member} is {size} bytes, but {where} has {max(free, 0)} bytes free (and keeps "
            f"{FREE_SPACE_MARGIN} free): make room there, or restore onto a larger disk"
        )


def check_revision(revision: str, *, app_version: str, head: str, known: set[str]) -> None:
    """BackupError unless an archive of schema `revision` can be checked and restored here.

    Rows are checked against this version's tables, and inserted into a database migrated to
    this version's schema: only an archive of that same revision fits. An older one is restored
    with the version that made it, and the database then upgraded.
    """
    if revision == head:
        return
    if revision in known:
        raise BackupError(
            f"the archive is of schema revision {revision!r}, made by an older FileWallBall "
            f"({app_version}); this one reads revision {head!r} only: restore it with "
            f"FileWallBall {app_version}, then upgrade (`filewallball migrate`)"
        )
    raise BackupError(
        f"the archive's schema revision {revision!r} is unknown here: it was made by a newer "
        f"FileWallBall ({app_version}); use that version"
    )


class SecretAction(enum.Enum):
    KEEP = "keep"  # the target's secret already matches, or no restored key needs one
    INSTALL = "install"  # write the archive's secret.key into the target's data directory
    MISMATCH = "mismatch"  # the operator accepted it: restored keys will not authenticate


def plan_secret(
    archive: SecretInfo, *, keys: int, target: SecretInfo, allow_mismatch: bool
) -> SecretAction:
    """What a restore does about the server secret, which every stored key hash depends on.

    BackupError when the restored keys could not authenticate and the operator did not say
    that is fine.
    """
    if keys == 0 or archive.fingerprint is None or archive.fingerprint == target.fingerprint:
        return SecretAction.KEEP
    if archive.source is SecretSource.FILE and target.source is not SecretSource.ENV:
        # The target is empty (checked before): nothing else depends on its own secret yet.
        return SecretAction.INSTALL
    if allow_mismatch:
        return SecretAction.MISMATCH
    if archive.source is SecretSource.FILE:
        raise BackupError(
            "this instance's FWB_SECRET_KEY differs from the server secret the archive's API "
            "keys were hashed with: unset it (the archive's secret.key is then installed), or set "
            "it to the archive's secret.key, or pass --allow-secret-mismatch and issue new keys"
        )
    here = {
        SecretSource.ENV: "has another FWB_SECRET_KEY",
        SecretSource.FILE: "uses another secret (its secret.key)",
        SecretSource.NONE: "has no secret yet",
    }[target.source]
    raise BackupError(
        f"the archive's API keys were hashed with the source's FWB_SECRET_KEY and this instance "
        f"{here}: set FWB_SECRET_KEY to the source's value, or pass --allow-secret-mismatch and "
        "issue new keys"
    )


@dataclass(frozen=True, slots=True)
class TargetContents:
    """What a restore target holds already."""

    files: int = 0
    blobs: int = 0
    ip_rules: int = 0
    keys: int = 0
    bootstrap_keys: int = 0
    audit_entries: int = 0
    bootstrap_audit_entries: int = 0

    def check_empty(self) -> None:
        """BackupError unless the target holds at most what a first start creates.

        A first start creates the bootstrap admin key and its audit entry; the restore replaces
        them with the archive's keys. Anything else (a file, an IP rule, another key, any other
        audit entry) means the target is in use, and a restore never merges.
        """
        found = [
            f"{what}: {count}"
            for what, count in (
                ("files", self.files),
                ("blob records", self.blobs),
                ("IP rules", self.ip_rules),
                ("API keys besides the bootstrap admin key", self.keys - self.bootstrap_keys),
                (
                    "audit entries besides the bootstrap one",
                    self.audit_entries - self.bootstrap_audit_entries,
                ),
            )
            if count
        ]
        if found:
            raise BackupError(
                "the target is not empty (" + ", ".join(found) + "): restore only into a new "
                "instance (a fresh database and data directory)"
            )
