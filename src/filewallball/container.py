"""The composition root: the one place that knows every adapter, picked from settings."""

from __future__ import annotations

from dependency_injector import containers, providers
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from filewallball.adapters.disk import DiskBlobStore
from filewallball.adapters.memory import MemoryCache, SystemClock
from filewallball.adapters.redis_cache import RedisCache, create_redis
from filewallball.adapters.sniffing import default_sniffer
from filewallball.adapters.sql import SqlFileRepository, create_engine
from filewallball.domain.models import TypePolicy
from filewallball.domain.ports import Cache
from filewallball.domain.services import FileService
from filewallball.settings import Settings


def _redis(url: str | None) -> Redis | None:
    return create_redis(url) if url else None


def _cache(redis: Redis | None, prefix: str) -> Cache:
    return RedisCache(redis, prefix=prefix) if redis is not None else MemoryCache()


def _type_policy(allowed: list[str], denied: list[str]) -> TypePolicy:
    return TypePolicy(allowed=tuple(allowed), denied=tuple(denied))


class Container(containers.DeclarativeContainer):
    settings = providers.Dependency(instance_of=Settings)

    # Both connect lazily, on first use: building the container does no I/O.
    engine = providers.Singleton(create_engine, url=settings.provided.resolved_database_url)
    redis = providers.Singleton(_redis, url=settings.provided.redis_url)

    files = providers.Singleton(SqlFileRepository, engine=engine)
    blobs = providers.Singleton(DiskBlobStore, root=settings.provided.blob_dir)
    cache = providers.Singleton(_cache, redis=redis, prefix=settings.provided.redis_prefix)
    sniffer = providers.Singleton(default_sniffer)
    clock = providers.Singleton(SystemClock)
    type_policy = providers.Singleton(
        _type_policy, allowed=settings.provided.allowed_types, denied=settings.provided.denied_types
    )

    file_service = providers.Singleton(
        FileService,
        files=files,
        blobs=blobs,
        cache=cache,
        sniffer=sniffer,
        clock=clock,
        max_upload_bytes=settings.provided.max_upload_bytes,
        preview_max_bytes=settings.provided.preview_max_bytes,
        type_policy=type_policy,
        cache_ttl_seconds=settings.provided.cache_ttl_seconds,
    )


def build_container(settings: Settings) -> Container:
    return Container(settings=settings)


async def close_clients(container: Container) -> None:
    """Close the pools the container opened (on shutdown)."""
    engine: AsyncEngine = container.engine()
    await engine.dispose()
    redis: Redis | None = container.redis()
    if redis is not None:
        await redis.aclose()
