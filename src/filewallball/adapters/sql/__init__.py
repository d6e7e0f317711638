"""SQL persistence on PostgreSQL (asyncpg) or embedded SQLite; importers use these names only."""

from __future__ import annotations

from filewallball.adapters.sql.access import SqlIpRuleRepository, SqlKeyRepository
from filewallball.adapters.sql.audit import SqlAuditLog, log_audit_event
from filewallball.adapters.sql.engine import create_engine
from filewallball.adapters.sql.file_records import SqlFileRepository
from filewallball.adapters.sql.schema import head_revision, known_revisions, upgrade
from filewallball.adapters.sql.stats import SqlStatsRepository
from filewallball.adapters.sql.store import DRIVER_ERRORS, utc
from filewallball.adapters.sql.tables import api_keys, audit_log, blobs, files, ip_rules, metadata
from filewallball.adapters.sql.usage import SqlUsageRepository

__all__ = [
    "DRIVER_ERRORS",
    "SqlAuditLog",
    "SqlFileRepository",
    "SqlIpRuleRepository",
    "SqlKeyRepository",
    "SqlStatsRepository",
    "SqlUsageRepository",
    "api_keys",
    "audit_log",
    "blobs",
    "create_engine",
    "files",
    "head_revision",
    "ip_rules",
    "known_revisions",
    "log_audit_event",
    "metadata",
    "upgrade",
    "utc",
]
