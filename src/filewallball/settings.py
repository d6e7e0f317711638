"""Configuration from the environment (prefix FWB_), built by the entrypoints, never at import."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from filewallball.domain.errors import InvalidRequest
from filewallball.domain.models import validate_type_pattern
from filewallball.domain.rates import RateRule
from filewallball.domain.security import IssuedKey, parse_network

GiB = 1024**3


# S3's rule for bucket names (no uppercase, no underscore), as AWS, MinIO and Ceph apply it.
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IP_LIKE = re.compile(r"\d+\.\d+\.\d+\.\d+")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# 100 years: longer than anything a duration is for, short enough that no date computed from
# it overflows.
MAX_DURATION_SECONDS = 3_155_760_000


def parse_duration(text: str) -> int:
    """Seconds in "3600", "90s", "15m", "12h", "7d" or "2w"; at most MAX_DURATION_SECONDS."""
    cleaned = text.strip().lower()
    number, unit = (cleaned, "s") if cleaned.isdigit() else (cleaned[:-1].strip(), cleaned[-1:])
    if unit not in _UNITS or not (number.isascii() and number.isdigit()):
        raise ValueError(f"not a duration: {text[:40]!r} (try 3600, 90s, 15m, 12h, 7d or 2w)")
    # The digits are counted first: int() of thousands of them costs, and past 4300 it raises.
    seconds = int(number) * _UNITS[unit] if len(number) <= 12 else MAX_DURATION_SECONDS + 1
    if seconds > MAX_DURATION_SECONDS:
        raise ValueError(f"a duration is at most 100 years ({MAX_DURATION_SECONDS} seconds)")
    return seconds


def _is_endpoint(url: str) -> bool:
    """scheme://host[:port][/]. botocore refuses anything else, but only once the server runs
    (a traceback, or a server never ready); credentials in it would be echoed in every error."""
    if not re.fullmatch(r"https?://[^/\s?#@]+/?", url):
        return False
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError unless a number in 0..65535
    except ValueError:
        return False
    return bool(parts.hostname)


ENV_PREFIX = "FWB_"
# The well-formed stand-ins of infra/kustomize/base (so the dev overlay starts as it is).
PLACEHOLDER_MARK = "PLACEHOLDER-change-me"
# Settings whose values are never echoed in an error message.
_AWS_SECRET_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
_SECRET_FIELDS = frozenset({"secret_key", "bootstrap_admin_key", "database_url", "redis_url"})


class SettingsError(Exception):
    """The environment's settings are invalid: one line per problem, naming its variable."""


def load_settings() -> Settings:
    """The settings from the environment, or SettingsError saying which FWB_* variable is wrong
    and why (what the CLI prints before it exits 2)."""
    try:
        return Settings()
    except ValidationError as error:
        raise SettingsError("\n".join(_problem_line(e) for e in error.errors())) from None


def _problem_line(problem: object) -> str:
    assert isinstance(problem, dict)
    location = problem.get("loc") or ()
    message = str(problem.get("msg", "invalid")).removeprefix("Value error, ")
    if not location:
        return message  # a check across settings names its variables itself
    field = str(location[0])
    variable = f"{ENV_PREFIX}{field.upper()}"
    raw = os.environ.get(variable)
    if raw is None or field in _SECRET_FIELDS:
        return f"{variable}: {message}"
    shown = raw if len(raw) <= 60 else raw[:57] + "..."
    return f"{variable}={shown!r}: {message}"


class Settings(BaseSettings):
    """Every knob of the service; see the configuration table in the README."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    # dev accepts the repository's placeholder secrets; staging and prod refuse them.
    environment: Literal["dev", "staging", "prod"] = "dev"
    data_dir: Path = Path("./var")
    database_url: str | None = None
    database_pool_size: int = Field(default=10, ge=1, le=1000)
    redis_url: str | None = None
    redis_prefix: str = "fwb:"
    public_base_url: str | None = None
    auto_migrate: bool | None = None

    max_upload_bytes: int = Field(default=5 * GiB, ge=0)
    preview_max_bytes: int = Field(default=64 * 1024, ge=1)
    allowed_types: Annotated[list[str], NoDecode] = []
    denied_types: Annotated[list[str], NoDecode] = []
    cache_ttl_seconds: int = Field(default=300, ge=1)
    # With Redis: copies of cached records and keys in each process, kept exact by a shared log.
    near_cache: bool = True
    temp_max_age_seconds: int = Field(default=3600, ge=60)
    min_free_bytes: int = Field(default=1024**3, ge=0)  # /readyz fails below this

    # Object storage (DESIGN.md §5, docs/deployment.md): with a bucket, blobs and renditions
    # live in S3 and no byte of them touches the local disk. Credentials: the AWS chain.
    s3_bucket: str | None = None
    s3_endpoint_url: str | None = None  # MinIO, SeaweedFS, Ceph RGW...; unset: AWS
    s3_region: str | None = None  # unset: the AWS chain's (AWS_REGION, the profile), else us-east-1
    s3_prefix: str = "filewallball/"
    s3_addressing_style: Literal["auto", "path", "virtual"] = "auto"
    # Whole-file GETs answer 302 to a presigned URL, after authentication, access and audit.
    s3_presigned_downloads: bool = False
    s3_presign_expires_seconds: int = Field(default=300, ge=1, le=7 * 24 * 3600)
    # Uploads stream in parts of this size (grown when 10,000 parts could not hold
    # FWB_MAX_UPLOAD_BYTES), at most s3_upload_concurrency of them in flight.
    s3_part_size_bytes: int = Field(default=8 * 1024**2, ge=5 * 1024**2, le=5 * GiB)
    s3_upload_concurrency: int = Field(default=2, ge=1, le=16)
    s3_max_connections: int = Field(default=64, ge=1, le=1000)

    # Resumable uploads (tus, DESIGN.md §6): an unfinished upload is purged this long after
    # its creation; an owner has at most this many unfinished; a writer's lock is a lease this
    # long, renewed while it writes (a killed process's lapses after it).
    tus_expires_in: int = Field(default=24 * 3600, ge=60)
    tus_max_open_uploads: int = Field(default=20, ge=1, le=100_000)
    tus_lock_seconds: float = Field(default=10.0, ge=1, le=300)

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # JSON lines (for Loki and friends), or readable lines (console); auto: console on a terminal
    log_format: Literal["auto", "json", "console"] = "auto"

    # Connections (seconds): a request's headers must arrive within this of the connection
    # opening or of the previous response; idle and keep-alive connections are closed after it.
    header_read_timeout: float = Field(default=10.0, gt=0, le=60)
    # An upload's body: never more than this without new bytes, and at least body_min_rate
    # bytes a second over each such span of waiting (0: no minimum rate, the timeout only).
    body_read_timeout: float = Field(default=30.0, gt=0, le=3600)
    body_min_rate: int = Field(default=1024, ge=0, le=1024**3)

    # Lifecycle: durations as seconds or with a unit ("90s", "15m", "12h", "7d", "2w")
    trash_retention: int = 0  # 0: DELETE is final
    default_expires_in: int | None = None
    max_expires_in: int | None = None
    maintenance_interval: int = Field(default=300, ge=1)
    # Audit entries are written in batches this often (seconds); 0 writes each in its request.
    audit_flush_interval: float = Field(default=0.1, ge=0, le=10)

    # Images
    max_image_pixels: int = Field(default=100_000_000, ge=1)
    thumbnail_timeout_seconds: float = Field(default=10.0, gt=0)
    thumbnail_max_source_bytes: int = Field(default=256 * 1024 * 1024, ge=1)
    # What a render's child process may allocate, the source included (RLIMIT_DATA); Python
    # and libvips take about 100 MiB of it after a first render.
    thumbnail_max_memory_bytes: int = Field(default=GiB, ge=128 * 1024**2)

    # Security (docs/security.md)
    secret_key: str | None = Field(default=None, min_length=32)
    bootstrap_admin_key: str | None = None
    ip_allow: Annotated[list[str], NoDecode] = []
    ip_deny: Annotated[list[str], NoDecode] = []
    trusted_proxies: Annotated[list[str], NoDecode] = []
    ip_rules_refresh_seconds: float = Field(default=5.0, gt=0)
    cors_origins: Annotated[list[str], NoDecode] = []
    metrics_allowed_cidrs: Annotated[list[str], NoDecode] = []
    # `filewallball worker`'s metrics endpoint (no key: bind it where only Prometheus reaches)
    worker_metrics_host: str = "127.0.0.1"
    worker_metrics_port: int = Field(default=9101, ge=0, le=65535)  # 0: none
    hsts: bool = False
    public_docs: bool = False
    rate_limit: str = "600/minute"
    upload_rate_limit: str = "60/minute"
    uploader_quota_bytes: int | None = Field(default=None, ge=0)
    uploader_quota_files: int | None = Field(default=None, ge=0)
    clamd_address: str | None = None
    scan_fail_open: bool = False

    @field_validator(
        "allowed_types",
        "denied_types",
        "ip_allow",
        "ip_deny",
        "trusted_proxies",
        "cors_origins",
        "metrics_allowed_cidrs",
        mode="before",
    )
    @classmethod
    def _split_patterns(cls, value: object) -> object:
        if isinstance(value, str):
            return [part for part in (p.strip() for p in value.split(",")) if part]
        return value

    @field_validator("allowed_types", "denied_types")
    @classmethod
    def _check_patterns(cls, value: list[str]) -> list[str]:
        return [validate_type_pattern(pattern) for pattern in value]

    @field_validator(
        "trash_retention",
        "default_expires_in",
        "max_expires_in",
        "maintenance_interval",
        "tus_expires_in",
        mode="before",
    )
    @classmethod
    def _duration(cls, value: object) -> object:
        return parse_duration(value) if isinstance(value, str) else value

    @field_validator("ip_allow", "ip_deny", "trusted_proxies", "metrics_allowed_cidrs")
    @classmethod
    def _check_cidrs(cls, value: list[str]) -> list[str]:
        try:
            return [str(parse_network(cidr)) for cidr in value]
        except InvalidRequest as error:
            raise ValueError(error.detail) from error

    @field_validator("rate_limit", "upload_rate_limit")
    @classmethod
    def _check_rate(cls, value: str) -> str:
        RateRule.parse(value)
        return value

    @field_validator("bootstrap_admin_key")
    @classmethod
    def _check_bootstrap_key(cls, value: str | None) -> str | None:
        if value is not None and IssuedKey.key_id_of(value) is None:
            raise ValueError("must look like fwb_<12 characters>_<43 or more characters>")
        return value

    @model_validator(mode="after")
    def _no_placeholder_secrets(self) -> Self:
        if self.environment == "dev":
            return self
        named = {f"{ENV_PREFIX}{field.upper()}": getattr(self, field) for field in _SECRET_FIELDS}
        if self.s3_bucket:
            # The S3 credentials come from the AWS chain, not from Settings: checked here too.
            named |= {name: os.environ.get(name) for name in _AWS_SECRET_VARIABLES}
        for variable, value in sorted(named.items()):
            if value and PLACEHOLDER_MARK.lower() in value.lower():
                raise ValueError(
                    f"{variable} is the repository's placeholder: set a real"
                    f" secret (FWB_ENVIRONMENT={self.environment} refuses placeholders)"
                )
        return self

    @field_validator("s3_bucket")
    @classmethod
    def _check_bucket(cls, value: str | None) -> str | None:
        if not value:
            return None  # empty: not set (disk), as an empty FWB_REDIS_URL means no Redis
        if not _BUCKET_NAME.fullmatch(value) or ".." in value or _IP_LIKE.fullmatch(value):
            raise ValueError(
                "must be an S3 bucket name: 3 to 63 of a-z, 0-9, '.', '-', starting and ending"
                " with a letter or digit, no '..', not like an IP address"
            )
        return value

    @field_validator("s3_endpoint_url")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value is not None and not _is_endpoint(value):
            raise ValueError(
                "must be an http:// or https:// URL of the S3 server: a host and an optional"
                " port, no path, query or credentials"
            )
        return value.rstrip("/") if value else None

    @field_validator("s3_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if value.startswith("/") or "//" in value or (value and not value.endswith("/")):
            raise ValueError("must be empty or like 'some/path/': no leading '/', ends with '/'")
        return value

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
    def uses_s3(self) -> bool:
        return self.s3_bucket is not None

    def s3_location_args(self) -> dict[str, Any]:
        """Where the S3 blobs are, as adapters.s3.S3Location's arguments (one mapping for the
        container, the start-up check and the readiness report)."""
        return {
            "bucket": self.s3_bucket,
            "endpoint_url": self.s3_endpoint_url,
            "region": self.s3_region,
            "prefix": self.s3_prefix,
            "addressing_style": self.s3_addressing_style,
        }

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def job_queue_name(self) -> str:
        """The SAQ queue of this installation (namespaced like every other Redis key)."""
        return f"{self.redis_prefix}jobs".replace(":", "-")

    @property
    def secret_key_file(self) -> Path:
        return self.data_dir / "secret.key"

    @property
    def admin_key_file(self) -> Path:
        return self.data_dir / "admin.key"
