"""The composition root: the one place that knows every adapter, picked from settings.

Read it as a table of contents: the clients, the adapters (a Selector picks the embedded or the
Redis one by FWB_REDIS_URL), the use cases, and what closes at shutdown. Building it does no I/O:
clients connect on first use. `await container.init_resources()` at start and
`await container.shutdown_resources()` at the end close them, dependents first.

Why Resources that only close: dependency-injector makes every provider downstream of an async
Resource return a Future, and the HTTP layer asks the container for its services on each
request; so the clients are Singletons (constructing one opens nothing), and a Resource beside
each closes it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Protocol

from dependency_injector import containers, providers
from sqlalchemy.ext.asyncio import AsyncEngine

from filewallball.adapters.audit_buffer import BufferedAuditLog
from filewallball.adapters.caching import CachedFileRepository, CachedKeyRepository
from filewallball.adapters.charsets import NormalizerCharsetDecoder
from filewallball.adapters.clamd import ClamdScanner, NoScanner
from filewallball.adapters.disk import DiskBlobStore
from filewallball.adapters.disk_parts import DiskPartStore
from filewallball.adapters.jobs import InProcessTaskQueue, SaqTaskQueue
from filewallball.adapters.memory import NoCache, SystemClock
from filewallball.adapters.metrics import (
    CountingAuditLog,
    InstrumentedJobRegistry,
    set_dependency,
    set_storage,
)
from filewallball.adapters.ratelimit import LimitsRateLimiter
from filewallball.adapters.redis.cache import RedisCache
from filewallball.adapters.redis.client import create_redis
from filewallball.adapters.redis.near_cache import NearCache
from filewallball.adapters.sniffing import default_sniffer
from filewallball.adapters.sql import (
    SqlAuditLog,
    SqlFileRepository,
    SqlIpRuleRepository,
    SqlKeyRepository,
    SqlStatsRepository,
    SqlUsageRepository,
    create_engine,
)
from filewallball.adapters.sql.resumable import SqlResumableRepository
from filewallball.adapters.thumbnail_pool import SubprocessThumbnailRenderer
from filewallball.domain.access import AccessService, Auditor
from filewallball.domain.jobs import JobRegistry
from filewallball.domain.maintenance import register_maintenance_jobs
from filewallball.domain.models import TypePolicy
from filewallball.domain.policies import ExpiryPolicy, Quota
from filewallball.domain.ports import PartStore
from filewallball.domain.resumable import ResumableLimits, ResumableService
from filewallball.domain.security import Role
from filewallball.domain.services import FileService
from filewallball.domain.stats import StatsService
from filewallball.domain.thumbnails import ThumbnailService, register_thumbnail_job
from filewallball.domain.uploads import Uploader, UploadLimits
from filewallball.secret_file import load_or_create_secret
from filewallball.settings import Settings

if TYPE_CHECKING:
    from filewallball.adapters.s3 import S3BlobStore


# The keys of the Selectors below, from the settings.
def _with_redis(url: str | None) -> str:
    return "redis" if url else "embedded"


def _near(url: str | None, enabled: bool) -> str:
    return "on" if url and enabled else "off"


def _buffering(flush_interval: float) -> str:
    return "buffered" if flush_interval else "direct"


def _scanning(address: str | None) -> str:
    return "clamd" if address else "none"


def _storage(bucket: str | None) -> str:
    return "s3" if bucket else "disk"


def _presign(enabled: bool, expires_seconds: int) -> int | None:
    return expires_seconds if enabled else None


def _s3_blob_store(location: dict[str, Any], **options: Any) -> S3BlobStore:
    # Imported here: aiobotocore and aiohttp take half a second to import, for S3 only.
    from filewallball.adapters.s3 import S3BlobStore, S3Location

    return S3BlobStore(S3Location(**location), **options)


def _s3_part_store(blobs: S3BlobStore, *, segment_bytes: int) -> PartStore:
    from filewallball.adapters.s3_parts import S3PartStore

    # One client and connection pool for both: the blob store's (it closes it at shutdown).
    return S3PartStore(blobs.connection, segment_bytes=segment_bytes)


class _Closeable(Protocol):
    async def aclose(self) -> None: ...


async def _closed_at_shutdown(
    client: _Closeable | None, before: object = None
) -> AsyncIterator[None]:
    """Nothing to open (the client connects on first use); at shutdown, close it."""
    yield
    if client is not None:
        await client.aclose()


async def _disposed_at_shutdown(engine: AsyncEngine) -> AsyncIterator[None]:
    yield
    await engine.dispose()


class Container(containers.DeclarativeContainer):
    settings = providers.Dependency(instance_of=Settings)
    mode = providers.Callable(_with_redis, settings.provided.redis_url)

    # -- clients ------------------------------------------------------------------------------
    engine = providers.Singleton(
        create_engine,
        url=settings.provided.resolved_database_url,
        pool_size=settings.provided.database_pool_size,
    )
    redis = providers.Selector(
        mode,
        redis=providers.Singleton(create_redis, settings.provided.redis_url),
        embedded=providers.Object(None),
    )

    # -- caches (docs/caching.md): Redis, shared by every replica; none in the embedded default
    near_cache = providers.Selector(
        providers.Callable(_near, settings.provided.redis_url, settings.provided.near_cache),
        on=providers.Singleton(NearCache, redis, prefix=settings.provided.redis_prefix),
        off=providers.Object(None),
    )
    cache = providers.Selector(
        mode,
        redis=providers.Singleton(
            RedisCache,
            redis,
            prefix=settings.provided.redis_prefix,
            name="records",
            ttl_seconds=settings.provided.cache_ttl_seconds,
            near=near_cache,
        ),
        embedded=providers.Singleton(NoCache),
    )
    key_cache = providers.Selector(
        mode,
        redis=providers.Singleton(
            RedisCache,
            redis,
            prefix=settings.provided.redis_prefix,
            name="keys",
            ttl_seconds=60,
            near=near_cache,
        ),
        embedded=providers.Singleton(NoCache),
    )

    # -- repositories and stores ----------------------------------------------------------------
    stored_files = providers.Singleton(SqlFileRepository, engine=engine)
    files = providers.Selector(
        mode,
        redis=providers.Singleton(CachedFileRepository, stored_files, cache=cache),
        embedded=stored_files,
    )
    stored_keys = providers.Singleton(SqlKeyRepository, engine=engine)
    keys = providers.Selector(
        mode,
        redis=providers.Singleton(CachedKeyRepository, stored_keys, cache=key_cache),
        embedded=stored_keys,
    )
    ip_rules = providers.Singleton(SqlIpRuleRepository, engine=engine)
    audit_written = providers.Singleton(SqlAuditLog, engine=engine)
    audit_store = providers.Selector(
        providers.Callable(_buffering, settings.provided.audit_flush_interval),
        buffered=providers.Singleton(
            BufferedAuditLog, audit_written, flush_interval=settings.provided.audit_flush_interval
        ),
        direct=audit_written,
    )
    audit_log = providers.Singleton(CountingAuditLog, inner=audit_store)
    usage = providers.Singleton(SqlUsageRepository, engine=engine)
    stats = providers.Singleton(SqlStatsRepository, engine=engine)
    # Blobs and renditions on the local volume, or in an S3 bucket (DESIGN.md §5).
    blobs = providers.Selector(
        providers.Callable(_storage, settings.provided.s3_bucket),
        disk=providers.Singleton(DiskBlobStore, root=settings.provided.blob_dir),
        s3=providers.Singleton(
            _s3_blob_store,
            location=settings.provided.s3_location_args.call(),
            part_size=settings.provided.s3_part_size_bytes,
            max_object_bytes=settings.provided.max_upload_bytes,
            upload_concurrency=settings.provided.s3_upload_concurrency,
            max_connections=settings.provided.s3_max_connections,
            presign_expires_seconds=providers.Callable(
                _presign,
                settings.provided.s3_presigned_downloads,
                settings.provided.s3_presign_expires_seconds,
            ),
        ),
    )

    # Resumable uploads' bytes until they complete: beside the blobs, so every replica has them.
    parts = providers.Selector(
        providers.Callable(_storage, settings.provided.s3_bucket),
        disk=providers.Singleton(DiskPartStore, root=settings.provided.blob_dir),
        s3=providers.Singleton(
            _s3_part_store, blobs, segment_bytes=settings.provided.s3_part_size_bytes
        ),
    )
    resumable_uploads = providers.Singleton(SqlResumableRepository, engine=engine)

    # -- the other adapters ---------------------------------------------------------------------
    rate_limiter = providers.Singleton(
        LimitsRateLimiter,
        storage_uri=settings.provided.redis_url,
        prefix=providers.Callable("{}rl:".format, settings.provided.redis_prefix),
    )
    scanner = providers.Selector(
        providers.Callable(_scanning, settings.provided.clamd_address),
        clamd=providers.Singleton(ClamdScanner, address=settings.provided.clamd_address),
        none=providers.Singleton(NoScanner),
    )
    sniffer = providers.Singleton(default_sniffer)
    charsets = providers.Singleton(NormalizerCharsetDecoder)
    # libvips in child processes (started on the first render) that time and memory bound.
    renderer = providers.Singleton(
        SubprocessThumbnailRenderer,
        max_pixels=settings.provided.max_image_pixels,
        timeout_seconds=settings.provided.thumbnail_timeout_seconds,
        max_source_bytes=settings.provided.thumbnail_max_source_bytes,
        max_memory_bytes=settings.provided.thumbnail_max_memory_bytes,
    )
    clock = providers.Singleton(SystemClock)
    # Filled by build_container() once the services exist (jobs call services, services queue jobs).
    job_registry = providers.Singleton(InstrumentedJobRegistry)
    # Jobs on Redis for `filewallball worker` processes, or in this process (embedded).
    task_queue = providers.Selector(
        mode,
        redis=providers.Singleton(
            SaqTaskQueue,
            redis_url=settings.provided.redis_url,
            name=settings.provided.job_queue_name,
        ),
        embedded=providers.Singleton(InProcessTaskQueue, job_registry),
    )
    # Telemetry hooks for the entrypoints (readiness checks, scrapes).
    observe_dependency = providers.Object(set_dependency)
    observe_storage = providers.Object(set_storage)

    # -- use cases ------------------------------------------------------------------------------
    auditor = providers.Singleton(Auditor, log=audit_log, clock=clock)
    access_service = providers.Singleton(
        AccessService,
        keys=keys,
        rules=ip_rules,
        auditor=auditor,
        clock=clock,
        server_secret=providers.Callable(
            load_or_create_secret,
            settings.provided.secret_key_file,
            env_value=settings.provided.secret_key,
        ),
        static_allow=providers.Callable(tuple, settings.provided.ip_allow),
        static_deny=providers.Callable(tuple, settings.provided.ip_deny),
        rules_refresh_seconds=settings.provided.ip_rules_refresh_seconds,
        role_quotas=providers.Dict(
            {
                Role.UPLOADER: providers.Factory(
                    Quota,
                    files=settings.provided.uploader_quota_files,
                    bytes=settings.provided.uploader_quota_bytes,
                )
            }
        ),
    )
    upload_limits = providers.Factory(
        UploadLimits,
        max_upload_bytes=settings.provided.max_upload_bytes,
        preview_max_bytes=settings.provided.preview_max_bytes,
        type_policy=providers.Factory(
            TypePolicy,
            allowed=providers.Callable(tuple, settings.provided.allowed_types),
            denied=providers.Callable(tuple, settings.provided.denied_types),
        ),
        scan_fail_open=settings.provided.scan_fail_open,
        trash_retention_seconds=settings.provided.trash_retention,
        expiry=providers.Factory(
            ExpiryPolicy,
            default_seconds=settings.provided.default_expires_in,
            max_seconds=settings.provided.max_expires_in,
        ),
    )
    uploader = providers.Singleton(
        Uploader,
        files=files,
        blobs=blobs,
        sniffer=sniffer,
        clock=clock,
        usage=usage,
        scanner=scanner,
        auditor=auditor,
        limits=upload_limits,
        jobs=task_queue,
    )
    file_service = providers.Singleton(
        FileService,
        files=files,
        blobs=blobs,
        clock=clock,
        usage=usage,
        auditor=auditor,
        limits=upload_limits,
        charsets=charsets,
        uploader=uploader,
    )
    resumable_service = providers.Singleton(
        ResumableService,
        uploads=resumable_uploads,
        parts=parts,
        uploader=uploader,
        clock=clock,
        auditor=auditor,
        limits=providers.Factory(
            ResumableLimits,
            expires_in_seconds=settings.provided.tus_expires_in,
            max_open_per_owner=settings.provided.tus_max_open_uploads,
            lock_seconds=settings.provided.tus_lock_seconds,
        ),
        upload_limits=upload_limits,
    )
    stats_service = providers.Singleton(
        StatsService, stats=stats, usage=usage, cache=cache, audit=audit_log, clock=clock
    )
    thumbnail_service = providers.Singleton(
        ThumbnailService,
        files=file_service,
        records=files,
        blobs=blobs,
        renderer=renderer,
        max_source_bytes=settings.provided.thumbnail_max_source_bytes,
    )

    # -- what closes at shutdown (a Resource closes after those that name it in `before`) -----
    engine_closing = providers.Resource(_disposed_at_shutdown, engine)
    redis_closing = providers.Resource(_closed_at_shutdown, redis)
    # Its backlog is written to the database; in-process jobs use the database too.
    audit_closing = providers.Resource(_closed_at_shutdown, audit_store, before=engine_closing)
    # Its children exit with this process anyway; closing them here reaps them. Jobs render
    # thumbnails: the queue closes first.
    renderer_closing = providers.Resource(_closed_at_shutdown, renderer)
    # The S3 client (jobs read and write blobs: the queue closes first).
    blobs_closing = providers.Resource(_closed_at_shutdown, blobs)
    queue_closing = providers.Resource(
        _closed_at_shutdown,
        task_queue,
        before=providers.List(engine_closing, redis_closing, renderer_closing, blobs_closing),
    )
    limiter_closing = providers.Resource(_closed_at_shutdown, rate_limiter)


def build_container(settings: Settings) -> Container:
    """The container for `settings`, its jobs registered."""
    container = Container(settings=settings)
    register_jobs(container)
    return container


def register_jobs(container: Container) -> None:
    """Give the job registry its handlers (after any override: they take the services)."""
    registry: JobRegistry = container.job_registry()
    register_thumbnail_job(
        registry, records=container.files(), thumbnails=container.thumbnail_service()
    )
    register_maintenance_jobs(
        registry,
        files=container.file_service(),
        resumable=container.resumable_service(),
        temp_max_age_seconds=container.settings().temp_max_age_seconds,
    )


async def open_resources(container: Container) -> None:
    """At start: make the clients the Resources close (none connects yet)."""
    opened = container.init_resources()
    if opened is not None:
        await opened


async def close_resources(container: Container) -> None:
    """At shutdown: write what is queued, then close every client, dependents first."""
    closed = container.shutdown_resources()
    if closed is not None:
        await closed
