"""Backups of a whole instance: create, verify and restore one archive of its metadata and blobs."""

from __future__ import annotations

from filewallball.backup.create import BackupResult, SkippedFile, create_backup
from filewallball.backup.format import BackupError, Header, Manifest
from filewallball.backup.instance import Instance, NoProgress, Progress
from filewallball.backup.restore import RestoreResult, restore_backup
from filewallball.backup.rules import SecretAction
from filewallball.backup.verify import verify_backup

__all__ = [
    "BackupError",
    "BackupResult",
    "Header",
    "Instance",
    "Manifest",
    "NoProgress",
    "Progress",
    "RestoreResult",
    "SecretAction",
    "SkippedFile",
    "create_backup",
    "restore_backup",
    "verify_backup",
]
