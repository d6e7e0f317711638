"""Configuration from the environment (prefix FWB_), built by the entrypoints, never at import."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from filewallball.domain.models import validate_type_pattern

GiB = 1024**3


class Settings(BaseSettings):
    """Every knob of the service; see the configuration table in the README."""

    model_config = SettingsConfigDict(env_prefix="FWB_", extra="ignore")

    data_dir: Path = Path("./var")
    database_url: str | None = None
    redis_url: str | None = None
    redis_prefix: str = "fwb:"
    public_base_url: str | None = None
    auto_migrate: bool | None = None

    max_upload_bytes: int = Field(default=5 * GiB, ge=0)
    preview_max_bytes: int = Field(default=64 * 1024, ge=1)
    allowed_types: Annotated[list[str], NoDecode] = []
    denied_types: Annotated[list[str], NoDecode] = []
    cache_ttl_seconds: int = Field(default=300, ge=1)
    temp_max_age_seconds: int = Field(default=3600, ge=60)

    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("allowed_types", "denied_types", mode="before")
    @classmethod
    def _split_patterns(cls, value: object) -> object:
        if isinstance(value, str):
            return [part for part in (p.strip() for p in value.split(",")) if part]
        return value

    @field_validator("allowed_types", "denied_types")
    @classmethod
    def _check_patterns(cls, value: list[str]) -> list[str]:
        return [validate_type_pattern(pattern) for pattern in value]

    @field_validator("public_base_url")
    @classmethod
    def _strip_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else value

    @property
    def resolved_database_url(self) -> str:
        """The database URL; the embedded SQLite file under data_dir by default."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'filewallball.db').resolve()}"

    @property
    def is_sqlite(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")

    @property
    def migrate_at_start(self) -> bool:
        """SQLite is migrated at start; PostgreSQL by `filewallball migrate` unless told otherwise."""
        return self.is_sqlite if self.auto_migrate is None else self.auto_migrate

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"
