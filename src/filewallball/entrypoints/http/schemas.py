"""Pydantic models of what the HTTP API returns, built from domain records."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from filewallball.domain.models import FileRecord
from filewallball.entrypoints.http.conditional import Validators


class FileUrls(BaseModel):
    self: str
    download: str
    view: str | None = Field(description="Text preview; null when the file is not text")
    thumbnail: str | None = Field(description="Thumbnail; null when the file is not an image")


class FileOut(BaseModel):
    id: str = Field(description="Opaque, URL-safe, unguessable")
    filename: str = Field(description="The client's name, sanitised; metadata only")
    size: int = Field(description="Bytes")
    content_type: str = Field(description="Sniffed from the bytes, never taken from the client")
    sha256: str
    created_at: datetime
    visibility: str
    owner: str | None
    scan_status: str
    thumbnail_status: str
    expires_at: datetime | None = Field(description="When the file goes; null: never")
    deleted_at: datetime | None = Field(description="In the trash since; null for live files")
    etag: str = Field(
        description="The record's entity tag (its ETag header): send it as If-Match to delete"
        " or restore only this version"
    )
    urls: FileUrls

    @classmethod
    def of(cls, record: FileRecord, base_url: str) -> FileOut:
        return cls(
            id=record.id,
            filename=record.filename,
            size=record.size,
            content_type=record.content_type,
            sha256=record.sha256,
            created_at=record.created_at,
            visibility=record.visibility.value,
            owner=record.owner,
            scan_status=record.scan_status.value,
            thumbnail_status=record.thumbnail_status.value,
            expires_at=record.expires_at,
            deleted_at=record.deleted_at,
            etag=Validators.of_record(record).etag,
            urls=FileUrls(
                self=f"{base_url}/files/{record.id}",
                download=f"{base_url}/download/{record.id}",
                view=f"{base_url}/view/{record.id}" if record.previewable else None,
                thumbnail=f"{base_url}/thumbnails/{record.id}" if record.thumbnailable else None,
            ),
        )


class FileList(BaseModel):
    items: list[FileOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end"
    )


class Health(BaseModel):
    status: str


class Check(BaseModel):
    status: str
    required: bool
    latency_ms: float
    detail: str | None = None


class Readiness(BaseModel):
    status: str
    checks: dict[str, Check]


class InvalidParameter(BaseModel):
    loc: list[str | int] = Field(description="Where: `query`, `body`, ... then the name")
    msg: str


class Problem(BaseModel):
    """RFC 9457 problem details, as every error is answered."""

    type: str = "about:blank"
    title: str = Field(description="The status's phrase")
    status: int
    detail: str = Field(description="What went wrong, for a person")
    instance: str = Field(description="The request's path")
    code: str = Field(description="Stable, snake_case: what a program checks")
    request_id: str | None = Field(description="The X-Request-ID: finds the log lines")
    errors: list[InvalidParameter] | None = Field(
        default=None, description="The invalid parameters (`invalid_request`)"
    )
    checks: dict[str, Check] | None = Field(
        default=None, description="Every dependency's check (/readyz's `not_ready`)"
    )
