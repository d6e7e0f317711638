"""Every table FileWallBall stores, as SQLAlchemy Core metadata (the migrations create them)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

metadata = sa.MetaData()

# Mirrors migrations/versions; the migrations, not this metadata, create the schema.
# Ids and filenames use the "C" collation on PostgreSQL so they sort bytewise, like SQLite and
# Python strings: a cursor then means the same position whatever the database's locale.
files = sa.Table(
    "files",
    metadata,
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
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
    sa.Index("ix_files_sha256", "sha256"),
    sa.Index("ix_files_created_at_id", "created_at", "id"),
    sa.Index("ix_files_size_id", "size", "id"),
    sa.Index("ix_files_filename_id", "filename", "id"),
    sa.Index("ix_files_content_type", "content_type"),
    sa.Index("ix_files_expires_at", "expires_at"),
    sa.Index("ix_files_deleted_at", "deleted_at"),
    sa.Index("ix_files_owner", "owner"),  # from 0002_security
)

blobs = sa.Table(
    "blobs",
    metadata,
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("refcount", sa.Integer, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("refcount >= 0", name="ck_blobs_refcount_non_negative"),
)

# From migrations/versions/0002_security.py. Their ids have the database's default collation,
# unlike files.id: SqlStore._bytewise orders them.
api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(16), primary_key=True),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("owner", sa.String(128), nullable=False),
    sa.Column("secret_hash", sa.String(64), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("allowed_cidrs", sa.Text, nullable=False),  # JSON array of CIDR strings
    sa.Column("quota_bytes", sa.BigInteger, nullable=True),
    sa.Column("quota_files", sa.BigInteger, nullable=True),
)

ip_rules = sa.Table(
    "ip_rules",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("cidr", sa.String(64), nullable=False),
    sa.Column("action", sa.String(8), nullable=False),
    sa.Column("note", sa.Text, nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    # INTEGER PRIMARY KEY is SQLite's rowid: autoincrementing, unlike BIGINT there.
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("actor", sa.String(128), nullable=True),
    sa.Column("key_id", sa.String(16), nullable=True),
    sa.Column("client_ip", sa.String(64), nullable=True),
    sa.Column("request_id", sa.String(128), nullable=True),
    sa.Column("target", sa.String(255), nullable=True),
    sa.Column("detail", sa.Text, nullable=True),
    sa.Column("bytes", sa.BigInteger, nullable=True),  # from 0004_audit_bytes
    sa.Index("ix_audit_log_at", "at"),
    sa.Index("ix_audit_log_actor_id", "actor", "id"),
    sa.Index("ix_audit_log_action_id", "action", "id"),
    sa.Index("ix_audit_log_target_id", "target", "id"),
)

# Room taken by uploads in progress, so concurrent uploads cannot pass a quota together
# (from 0005_quota_reservations). A reservation past `expires_at` (its upload's process died)
# no longer counts, and the maintenance job deletes it.
quota_reservations = sa.Table(
    "quota_reservations",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("owner", sa.String(128), nullable=False),
    sa.Column("files", sa.Integer, nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_quota_reservations_owner_expires_at", "owner", "expires_at"),
)

# Resumable (tus) uploads in progress, and the segments of their bytes committed so far (from
# 0006_resumable_uploads). A write lock is a lease: `lock_token` holds it until `lock_until`.
resumable_uploads = sa.Table(
    "resumable_uploads",
    metadata,
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
    sa.Index("ix_resumable_uploads_owner", "owner"),
    sa.Index("ix_resumable_uploads_expires_at", "expires_at"),
)

resumable_segments = sa.Table(
    "resumable_segments",
    metadata,
    sa.Column("upload_id", sa.String(32), primary_key=True),
    sa.Column("start", sa.BigInteger, primary_key=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("key", sa.String(64), nullable=False),
)
