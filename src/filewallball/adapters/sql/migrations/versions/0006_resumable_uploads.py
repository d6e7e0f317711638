"""Resumable (tus) uploads in progress and their committed segments.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "resumable_uploads",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("owner", sa.String(128), nullable=True),
        sa.Column("length", sa.BigInteger, nullable=True),
        sa.Column("upload_offset", sa.BigInteger, nullable=False),
        sa.Column("filename", sa.Text, nullable=False),
        sa.Column("visibility", sa.String(16), nullable=False),
        sa.Column("expires_in_seconds", sa.BigInteger, nullable=True),
        sa.Column("upload_metadata", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reservation_id", sa.String(32), nullable=True),
        sa.Column("reservation_bytes", sa.BigInteger, nullable=True),
        sa.Column("file_id", sa.String(32), nullable=True),
        sa.Column("lock_token", sa.String(64), nullable=True),
        sa.Column("lock_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("concat", sa.Text, nullable=True),
    )
    op.create_index("ix_resumable_uploads_owner", "resumable_uploads", ["owner"])
    op.create_index("ix_resumable_uploads_expires_at", "resumable_uploads", ["expires_at"])
    op.create_table(
        "resumable_segments",
        sa.Column("upload_id", sa.String(32), primary_key=True),
        sa.Column("start", sa.BigInteger, primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("resumable_segments")
    op.drop_index("ix_resumable_uploads_expires_at", table_name="resumable_uploads")
    op.drop_index("ix_resumable_uploads_owner", table_name="resumable_uploads")
    op.drop_table("resumable_uploads")
