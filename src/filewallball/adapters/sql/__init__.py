"""SQL persistence (SQLAlchemy Core, async): PostgreSQL through asyncpg, or embedded SQLite."""

from __future__ import annotations

from filewallball.adapters.sql.access import (
    SqlAuditLog,
    SqlIpRuleRepository,
    SqlKeyRepository,
    SqlUsageRepository,
)
from filewallball.adapters.sql.file_records import (
    SqlFileRepository,
    create_engine,
    head_revision,
    metadata,
    upgrade,
)
from filewallball.adapters.sql.stats import SqlStatsRepository

__all__ = [
    "SqlAuditLog",
    "SqlFileRepository",
    "SqlIpRuleRepository",
    "SqlKeyRepository",
    "SqlStatsRepository",
    "SqlUsageRepository",
    "create_engine",
    "head_revision",
    "metadata",
    "upgrade",
]
