"""Task queues: jobs in the server process (embedded default), or on Redis with SAQ (production).

Why SAQ rather than arq or taskiq: it is maintained, asyncio-native, and one package gives all
we need: retries with exponential backoff as plain job fields, a job `key` that makes enqueueing
idempotent (`serve` enqueues the maintenance and scrub jobs on a schedule with keys per period,
so replicas scheduling the same run queue it once). arq leaves backoff to each job (raise
`Retry(defer=...)`); taskiq spreads the Redis broker, retries and its scheduler over several
packages.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio
import structlog
from saq import Job, Worker
from saq.queue.redis import RedisQueue
from saq.types import Context

from filewallball.adapters.redis.client import REDIS_FAILURES
from filewallball.domain.errors import DependencyUnavailable
from filewallball.domain.jobs import JobHandler, JobPayload, JobRegistry, TaskQueue

_log = structlog.get_logger("filewallball.jobs")
# OSError covers the builtin ConnectionError and TimeoutError a socket may raise directly.


class InProcessTaskQueue(TaskQueue):
    """Runs each job as an asyncio task of this process; queued jobs are lost on exit."""

    def __init__(
        self,
        registry: JobRegistry,
        *,
        max_attempts: int = 3,
        retry_delay: float = 1.0,
        max_retry_delay: float = 60.0,
    ) -> None:
        self._registry = registry
        self._max_attempts = max_attempts
        self._retry_delay = retry_delay
        self._max_retry_delay = max_retry_delay
        # Pending and running jobs by (name, key); also what keeps their tasks referenced.
        self._jobs: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._closed = False

    async def enqueue(self, name: str, *, key: str, payload: JobPayload) -> None:
        if self._closed:
            raise RuntimeError("the task queue is closed")
        handler = self._registry.get(name)  # an unknown job is a bug: fail at the caller
        if (name, key) in self._jobs:
            return
        task = asyncio.create_task(self._run(name, key, handler, dict(payload)))
        self._jobs[(name, key)] = task

    async def ping(self) -> None:
        """Always answers: the queue lives in this process."""

    async def drain(self) -> None:
        """Wait until every job, including any queued meanwhile, has finished or given up."""
        while self._jobs:
            await asyncio.gather(*self._jobs.values(), return_exceptions=True)

    async def aclose(self) -> None:
        """Cancel what is left and refuse new jobs."""
        self._closed = True
        tasks = list(self._jobs.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._jobs.clear()

    async def _run(self, name: str, key: str, handler: JobHandler, payload: JobPayload) -> None:
        try:
            for attempt in range(1, self._max_attempts + 1):
                try:
                    await handler(payload)
                    return
                except Exception as error:  # a failing job must never take the server down
                    _log_failure(name, key, attempt, self._max_attempts, error)
                    if attempt < self._max_attempts:
                        await asyncio.sleep(self._backoff(attempt))
        finally:
            # Forgotten here, not in a done callback, so an enqueue right after the job ends
            # is never mistaken for a duplicate of it.
            self._jobs.pop((name, key), None)

    def _backoff(self, attempt: int) -> float:
        return float(min(self._max_retry_delay, self._retry_delay * 2 ** (attempt - 1)))


class SaqTaskQueue(TaskQueue):
    """Enqueues jobs on Redis for `filewallball worker` processes; `name` is also the namespace."""

    def __init__(
        self,
        *,
        redis_url: str,
        name: str = "filewallball",
        max_attempts: int = 3,
        retry_delay: float = 1.0,
        max_retry_delay: float = 300.0,
        timeout_seconds: int = 600,
    ) -> None:
        self._queue = RedisQueue(_redis_client(redis_url), name=name)
        self._max_attempts = max_attempts
        self._retry_delay = retry_delay
        self._max_retry_delay = max_retry_delay
        self._timeout = timeout_seconds

    async def enqueue(self, name: str, *, key: str, payload: JobPayload) -> None:
        job = Job(
            function=name,
            kwargs={"payload": payload},
            # SAQ keys are unique per queue, not per function: qualify with the job name.
            key=f"{name}:{key}",
            retries=self._max_attempts,  # SAQ counts every attempt, the first included
            retry_delay=self._retry_delay,
            # A number caps the exponential backoff (SAQ adds full jitter below the cap).
            retry_backoff=self._max_retry_delay,
            # Also bounds recovery: a job whose worker died is swept and retried after it.
            timeout=self._timeout,
        )
        try:
            # SAQ enqueues nothing while a job with this key is queued, scheduled for a
            # retry or running; a finished job's key may be used again.
            await self._queue.enqueue(job)
        except REDIS_FAILURES as error:
            raise DependencyUnavailable("redis", f"cannot queue job {name!r}: {error}") from error

    async def ping(self) -> None:
        try:
            await self._queue.redis.ping()
        except REDIS_FAILURES as error:
            raise DependencyUnavailable("redis", f"redis is unavailable: {error}") from error

    async def aclose(self) -> None:
        try:
            await self._queue.disconnect()
        except REDIS_FAILURES as error:  # closing a client to a dead Redis must not fail
            _log.warning("task_queue_close_failed", error=repr(error))


async def run_worker(
    *,
    redis_url: str,
    registry: JobRegistry,
    name: str = "filewallball",
    concurrency: int = 4,
    stop: asyncio.Event | None = None,
    grace_seconds: float = 25.0,
) -> None:
    """Consume the queue `name` until `stop` is set (or SIGTERM/SIGINT), then stop gracefully."""
    queue = RedisQueue(_redis_client(redis_url), name=name)
    functions = [(job, _saq_function(job, registry.get(job))) for job in registry.names()]
    worker = _GracefulWorker(
        queue,
        functions,
        concurrency=concurrency,
        # Idle consumers wake up every second, so a stop never waits on an empty queue.
        dequeue_timeout=1.0,
        grace_seconds=grace_seconds,
    )
    await queue.connect()
    started = asyncio.create_task(worker.start())
    try:
        if stop is None:
            await started
        else:
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait({started, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            await worker.stop()
            await started
    finally:
        if not started.done():  # we were cancelled: Worker.start stops gracefully on cancel
            started.cancel()
            await asyncio.gather(started, return_exceptions=True)
        await queue.disconnect()


class _GracefulWorker(Worker[Context]):
    """A SAQ Worker whose stop lets running jobs finish, for up to `grace_seconds`."""

    def __init__(self, *args: Any, grace_seconds: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._grace_seconds = grace_seconds

    async def stop(self) -> None:
        # SAQ's own shutdown_grace_period_s also waits for its upkeep loops, which sleep for
        # up to a minute; so wait only for the consumer tasks ("process", as SAQ names them),
        # then let SAQ cancel the rest. A job still running then is cancelled and re-queued.
        self.event.set()
        consumers = [task for task in self.tasks if task.get_name() == "process"]
        if consumers:
            await asyncio.wait(consumers, timeout=self._grace_seconds)
        await super().stop()


def _saq_function(name: str, handler: JobHandler) -> Callable[..., Awaitable[None]]:
    """A SAQ job function that runs `handler` on the payload and logs its failures."""

    async def run(ctx: Context, *, payload: JobPayload) -> None:
        try:
            await handler(payload)
        except Exception as error:
            job = ctx.get("job")
            attempt = job.attempts if job else 0
            limit = job.retries if job else 0
            _log_failure(name, job.key if job else "", attempt, limit, error)
            raise  # SAQ retries the job, or marks it failed after the last attempt

    return run


def _log_failure(name: str, key: str, attempt: int, max_attempts: int, error: Exception) -> None:
    _log.warning(
        "job_failed",
        job=name,
        key=key,
        attempt=attempt,
        max_attempts=max_attempts,
        final=attempt >= max_attempts,
        error=repr(error),
    )


def _redis_client(url: str) -> redis.asyncio.Redis:
    # No socket read timeout: the worker blocks on BLMOVE while it waits for jobs.
    return redis.asyncio.Redis.from_url(url, socket_connect_timeout=5)
