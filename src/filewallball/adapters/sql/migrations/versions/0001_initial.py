"""Files and the reference-counted blobs they name.

Revision ID: 0001
Revises:
Create Date: 2026-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "blobs",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("refcount", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("refcount >= 0", name="ck_blobs_refcount_non_negative"),
    )
    op.create_table(
        "files",
        # "C" collation on PostgreSQL: ids and names sort bytewise there as on SQLite, so
        # keyset pagination gives the same order whatever the database's locale.
        sa.Column(
            "id",
            sa.String(32).with_variant(postgresql.VARCHAR(32, collation="C"), "postgresql"),
            primary_key=True,
        ),
        sa.Column(
            "filename",
            sa.Text().with_variant(postgresql.TEXT(collation="C"), "postgresql"),
            nullable=False,
        ),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("content_type", sa.String(255), nullable=False),
        sa.Column("sha256", sa.String(64), sa.ForeignKey("blobs.sha256"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("visibility", sa.String(16), nullable=False),
        sa.Column("owner", sa.String(128), nullable=True),
        sa.Column("scan_status", sa.String(16), nullable=False),
        sa.Column("thumbnail_status", sa.String(16), nullable=False),
    )
    op.create_index("ix_files_sha256", "files", ["sha256"])
    # (sort column, id): one index per keyset-paginated sort order, read backwards when descending.
    op.create_index("ix_files_created_at_id", "files", ["created_at", "id"])
    op.create_index("ix_files_size_id", "files", ["size", "id"])
    op.create_index("ix_files_filename_id", "files", ["filename", "id"])
    op.create_index("ix_files_content_type", "files", ["content_type"])


def downgrade() -> None:
    op.drop_table("files")
    op.drop_table("blobs")
