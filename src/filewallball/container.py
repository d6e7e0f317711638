"""The composition root: the one place that knows every adapter, picked from settings."""

from __future__ import annotations

from dependency_injector import containers, providers
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from filewallball.adapters.audit_buffer import BufferedAuditLog
from filewallball.adapters.caching import CachedFileRepository, CachedKeyRepository
from filewallball.adapters.charsets import NormalizerCharsetDecoder
from filewallball.adapters.clamd import ClamdScanner, NoScanner
from filewallball.adapters.disk import DiskBlobStore
from filewallball.adapters.jobs import InProcessTaskQueue, SaqTaskQueue
from filewallball.adapters.memory import NoCache, SystemClock
from filewallball.adapters.metrics import (
    CountingAuditLog,
    InstrumentedJobRegistry,
    set_dependency,
    set_storage,
)
from filewallball.adapters.ratelimit import LimitsRateLimiter
from filewallball.adapters.redis.cache import RedisCache, create_redis
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
from filewallball.adapters.vips import VipsThumbnailRenderer
from filewallball.domain.access import AccessService, Auditor
from filewallball.domain.jobs import JobRegistry, TaskQueue
from filewallball.domain.maintenance import register_maintenance_jobs
from filewallball.domain.models import TypePolicy
from filewallball.domain.policies import ExpiryPolicy
from filewallball.domain.ports import AuditLog, Cache, FileRepository, KeyRepository, MalwareScanner
from filewallball.domain.security import Role
from filewallball.domain.services import FileService, UploadLimits
from filewallball.domain.stats import StatsService
from filewallball.domain.thumbnails import ThumbnailService, register_thumbnail_job
from filewallball.secret_file import load_or_create_secret
from filewallball.settings import Settings


def _redis(url: str | None) -> Redis | None:
    return create_redis(url) if url else None


def _near_cache(redis: Redis | None, prefix: str, enabled: bool) -> NearCache | None:
    """Per-process copies of Redis entries, for the caches below (only with Redis)."""
    return NearCache(redis, prefix=prefix) if redis is not None and enabled else None


def _cache(
    redis: Redis | None, prefix: str, near: NearCache | None, name: str, ttl_seconds: int
) -> Cache:
    """Redis, shared by every process and replica; none in the embedded default (see caching)."""
    if redis is None:
        return NoCache()
    return RedisCache(redis, prefix=prefix, name=name, ttl_seconds=ttl_seconds, near=near)


def _files(engine: AsyncEngine, cache: Cache) -> FileRepository:
    stored = SqlFileRepository(engine=engine)
    return stored if isinstance(cache, NoCache) else CachedFileRepository(stored, cache=cache)


def _keys(engine: AsyncEngine, cache: Cache) -> KeyRepository:
    stored = SqlKeyRepository(engine=engine)
    return stored if isinstance(cache, NoCache) else CachedKeyRepository(stored, cache=cache)


def _audit_log(engine: AsyncEngine, flush_interval: float) -> AuditLog:
    stored = SqlAuditLog(engine=engine)
    if not flush_interval:
        return stored
    return BufferedAuditLog(stored, flush_interval=flush_interval)


def _scanner(address: str | None) -> MalwareScanner:
    return ClamdScanner(address=address) if address else NoScanner()


def _task_queue(registry: JobRegistry, redis_url: str | None, name: str) -> TaskQueue:
    """Jobs on Redis for `filewallball worker` processes, or in this process (embedded)."""
    return (
        SaqTaskQueue(redis_url=redis_url, name=name) if redis_url else InProcessTaskQueue(registry)
    )


def _limits(settings: Settings) -> UploadLimits:
    return UploadLimits(
        max_upload_bytes=settings.max_upload_bytes,
        preview_max_bytes=settings.preview_max_bytes,
        type_policy=TypePolicy(
            allowed=tuple(settings.allowed_types), denied=tuple(settings.denied_types)
        ),
        scan_fail_open=settings.scan_fail_open,
        trash_retention_seconds=settings.trash_retention,
        expiry=ExpiryPolicy(
            default_seconds=settings.default_expires_in, max_seconds=settings.max_expires_in
        ),
    )


def _role_quotas(settings: Settings) -> dict[Role, tuple[int | None, int | None]]:
    return {Role.UPLOADER: (settings.uploader_quota_bytes, settings.uploader_quota_files)}


class Container(containers.DeclarativeContainer):
    settings = providers.Dependency(instance_of=Settings)

    # Both connect lazily, on first use: building the container does no I/O.
    engine = providers.Singleton(
        create_engine,
        url=settings.provided.resolved_database_url,
        pool_size=settings.provided.database_pool_size,
    )
    redis = providers.Singleton(_redis, url=settings.provided.redis_url)

    near_cache = providers.Singleton(
        _near_cache,
        redis=redis,
        prefix=settings.provided.redis_prefix,
        enabled=settings.provided.near_cache,
    )

    cache = providers.Singleton(
        _cache,
        redis=redis,
        prefix=settings.provided.redis_prefix,
        near=near_cache,
        name="records",
        ttl_seconds=settings.provided.cache_ttl_seconds,
    )
    key_cache = providers.Singleton(
        _cache,
        redis=redis,
        prefix=settings.provided.redis_prefix,
        near=near_cache,
        name="keys",
        ttl_seconds=60,
    )
    files = providers.Singleton(_files, engine=engine, cache=cache)
    keys = providers.Singleton(_keys, engine=engine, cache=key_cache)
    ip_rules = providers.Singleton(SqlIpRuleRepository, engine=engine)
    audit_store = providers.Singleton(
        _audit_log, engine=engine, flush_interval=settings.provided.audit_flush_interval
    )
    audit_log = providers.Singleton(CountingAuditLog, inner=audit_store)
    usage = providers.Singleton(SqlUsageRepository, engine=engine)
    stats = providers.Singleton(SqlStatsRepository, engine=engine)
    blobs = providers.Singleton(DiskBlobStore, root=settings.provided.blob_dir)
    rate_limiter = providers.Singleton(
        LimitsRateLimiter,
        storage_uri=settings.provided.redis_url,
        prefix=providers.Callable(lambda p: f"{p}rl:", settings.provided.redis_prefix),
    )
    scanner = providers.Singleton(_scanner, address=settings.provided.clamd_address)
    sniffer = providers.Singleton(default_sniffer)
    charsets = providers.Singleton(NormalizerCharsetDecoder)
    renderer = providers.Singleton(
        VipsThumbnailRenderer,
        max_pixels=settings.provided.max_image_pixels,
        timeout_seconds=settings.provided.thumbnail_timeout_seconds,
        max_source_bytes=settings.provided.thumbnail_max_source_bytes,
    )
    clock = providers.Singleton(SystemClock)

    # Filled by build_container() once the services exist (jobs call services, services queue jobs).
    job_registry = providers.Singleton(InstrumentedJobRegistry)
    # Telemetry hooks for the entrypoints (readiness checks, scrapes).
    observe_dependency = providers.Object(set_dependency)
    observe_storage = providers.Object(set_storage)
    task_queue = providers.Singleton(
        _task_queue,
        registry=job_registry,
        redis_url=settings.provided.redis_url,
        name=providers.Callable(
            lambda p: f"{p}jobs".replace(":", "-"), settings.provided.redis_prefix
        ),
    )

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
        role_quotas=providers.Callable(_role_quotas, settings),
    )
    file_service = providers.Singleton(
        FileService,
        files=files,
        blobs=blobs,
        sniffer=sniffer,
        clock=clock,
        usage=usage,
        scanner=scanner,
        auditor=auditor,
        limits=providers.Callable(_limits, settings),
        charsets=charsets,
        jobs=task_queue,
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


def build_container(settings: Settings) -> Container:
    container = Container(settings=settings)
    registry: JobRegistry = container.job_registry()
    register_thumbnail_job(
        registry, records=container.files(), thumbnails=container.thumbnail_service()
    )
    register_maintenance_jobs(
        registry, files=container.file_service(), temp_max_age_seconds=settings.temp_max_age_seconds
    )
    return container


async def close_clients(container: Container) -> None:
    """Write what is queued, then close the pools the container opened (on shutdown)."""
    audit: AuditLog = container.audit_store()
    if isinstance(audit, BufferedAuditLog):
        await audit.close()
    engine: AsyncEngine = container.engine()
    await engine.dispose()
    limiter: LimitsRateLimiter = container.rate_limiter()
    await limiter.aclose()
    queue: TaskQueue = container.task_queue()
    if isinstance(queue, InProcessTaskQueue | SaqTaskQueue):
        await queue.aclose()
    redis: Redis | None = container.redis()
    if redis is not None:
        await redis.aclose()
