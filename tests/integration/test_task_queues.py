"""The TaskQueue contract, in process and on real Redis with SAQ; then a worker in its own process."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from filewallball.adapters.jobs import InProcessTaskQueue, SaqTaskQueue, run_worker
from filewallball.domain.errors import DependencyUnavailable
from filewallball.domain.jobs import JobPayload, JobRegistry, TaskQueue

CLOSED_PORT_URL = "redis://127.0.0.1:1/0"
DEADLINE_SECONDS = 15.0

# Starts a queue and its consumers for the handlers in the registry; stops them on exit.
Running = Callable[[JobRegistry], AbstractAsyncContextManager[TaskQueue]]


async def eventually(check: Callable[[], bool], what: str) -> None:
    """Poll `check` until it holds; fail after the deadline."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {DEADLINE_SECONDS} s: {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
def saq_name(redis_server: str) -> Iterator[str]:
    """A queue name of this test's own; SAQ's keys for it are deleted afterwards."""
    import redis

    name = f"fwbtest-{uuid.uuid4().hex[:12]}"
    yield name
    client = redis.Redis.from_url(redis_server)
    try:
        for pattern in (f"saq:{name}:*", f"saq:job:{name}:*"):
            keys = list(client.scan_iter(match=pattern))
            if keys:
                client.delete(*keys)
    finally:
        client.close()


@pytest.fixture(params=["in_process", "saq"])
def running(request: pytest.FixtureRequest) -> Running:
    if request.param == "in_process":

        @asynccontextmanager
        async def in_process(registry: JobRegistry) -> AsyncIterator[TaskQueue]:
            queue = InProcessTaskQueue(registry, max_attempts=3, retry_delay=0.01)
            try:
                yield queue
            finally:
                await queue.aclose()

        return in_process

    # Looked up only here, so the in-process run does not skip when Redis is down.
    url: str = request.getfixturevalue("redis_server")
    name: str = request.getfixturevalue("saq_name")

    @asynccontextmanager
    async def saq(registry: JobRegistry) -> AsyncIterator[TaskQueue]:
        queue = SaqTaskQueue(
            redis_url=url, name=name, max_attempts=3, retry_delay=0.01, max_retry_delay=0.05
        )
        stop = asyncio.Event()
        worker = asyncio.create_task(
            run_worker(redis_url=url, registry=registry, name=name, stop=stop, grace_seconds=5)
        )
        try:
            yield queue
        finally:
            stop.set()
            await asyncio.wait_for(worker, DEADLINE_SECONDS)
            await queue.aclose()

    return saq


async def test_a_job_runs_with_its_payload(running: Running) -> None:
    seen: list[JobPayload] = []

    async def handler(payload: JobPayload) -> None:
        seen.append(payload)

    registry = JobRegistry()
    registry.register("record", handler)
    payload: JobPayload = {"file_id": "f_123", "size": 42, "note": None}
    async with running(registry) as queue:
        await queue.ping()
        await queue.enqueue("record", key="f_123", payload=payload)
        await eventually(lambda: len(seen) == 1, "the job ran")
    assert seen == [payload]


async def test_the_same_key_runs_once_while_pending(running: Running) -> None:
    seen: list[JobPayload] = []
    gate = asyncio.Event()

    async def handler(payload: JobPayload) -> None:
        seen.append(payload)
        await gate.wait()

    registry = JobRegistry()
    registry.register("slow", handler)
    async with running(registry) as queue:
        await queue.enqueue("slow", key="k", payload={"n": 1})
        await queue.enqueue("slow", key="k", payload={"n": 2})
        # The key is per job name: another job may use it.
        await queue.enqueue("slow", key="other", payload={"n": 9})
        gate.set()
        await eventually(lambda: len(seen) == 2, "both distinct jobs ran")
        # Once a job has finished, its key may be used again.
        await queue.enqueue("slow", key="k", payload={"n": 3})
        await eventually(lambda: {"n": 3} in seen, "the re-enqueued job ran")
    assert sorted(p["n"] for p in seen if isinstance(p["n"], int)) == [1, 3, 9]


async def test_a_job_that_fails_once_succeeds_on_retry(running: Running) -> None:
    attempts: list[int] = []
    done = asyncio.Event()

    async def flaky(payload: JobPayload) -> None:
        attempts.append(len(attempts) + 1)
        if len(attempts) == 1:
            raise RuntimeError("transient")
        done.set()

    registry = JobRegistry()
    registry.register("flaky", flaky)
    with capture_logs() as logs:
        async with running(registry) as queue:
            await queue.enqueue("flaky", key="once", payload={})
            await eventually(done.is_set, "the retry succeeded")
    assert attempts == [1, 2]
    failures = [entry for entry in logs if entry["event"] == "job_failed"]
    assert [(f["job"], f["attempt"], f["final"]) for f in failures] == [("flaky", 1, False)]
    assert "transient" in failures[0]["error"]


async def test_a_job_that_always_fails_stops_after_max_attempts(running: Running) -> None:
    attempts: list[int] = []
    after: list[JobPayload] = []

    async def broken(payload: JobPayload) -> None:
        attempts.append(len(attempts) + 1)
        raise ValueError("always")

    async def healthy(payload: JobPayload) -> None:
        after.append(payload)

    registry = JobRegistry()
    registry.register("broken", broken)
    registry.register("healthy", healthy)
    with capture_logs() as logs:
        async with running(registry) as queue:
            await queue.enqueue("broken", key="b", payload={})
            await eventually(lambda: len(attempts) == 3, "three attempts")
            # The consumers survive the failure.
            await queue.enqueue("healthy", key="h", payload={"ok": 1})
            await eventually(lambda: len(after) == 1, "a later job ran")
            # Longer than SAQ's one-second poll for scheduled retries: no fourth attempt comes.
            await asyncio.sleep(1.2)
    assert attempts == [1, 2, 3]
    failures = [entry for entry in logs if entry["event"] == "job_failed"]
    assert [(f["attempt"], f["final"]) for f in failures] == [(1, False), (2, False), (3, True)]


# In process only.


async def test_in_process_backoff_grows_exponentially() -> None:
    times: list[float] = []

    async def broken(payload: JobPayload) -> None:
        times.append(time.monotonic())
        raise RuntimeError("no")

    registry = JobRegistry()
    registry.register("broken", broken)
    queue = InProcessTaskQueue(registry, max_attempts=3, retry_delay=0.1)
    await queue.enqueue("broken", key="k", payload={})
    await asyncio.wait_for(queue.drain(), DEADLINE_SECONDS)
    assert len(times) == 3
    assert times[1] - times[0] >= 0.1
    assert times[2] - times[1] >= 0.2


async def test_in_process_drain_waits_for_jobs_queued_by_jobs() -> None:
    ran: list[str] = []
    queue: InProcessTaskQueue

    async def first(payload: JobPayload) -> None:
        ran.append("first")
        await queue.enqueue("second", key="s", payload={})

    async def second(payload: JobPayload) -> None:
        await asyncio.sleep(0.05)
        ran.append("second")

    registry = JobRegistry()
    registry.register("first", first)
    registry.register("second", second)
    queue = InProcessTaskQueue(registry)
    await queue.enqueue("first", key="f", payload={})
    await asyncio.wait_for(queue.drain(), DEADLINE_SECONDS)
    assert ran == ["first", "second"]
    await queue.aclose()


async def test_in_process_aclose_cancels_running_jobs_and_refuses_new_ones() -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def forever(payload: JobPayload) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    registry = JobRegistry()
    registry.register("forever", forever)
    queue = InProcessTaskQueue(registry)
    await queue.enqueue("forever", key="k", payload={})
    await asyncio.wait_for(started.wait(), DEADLINE_SECONDS)
    await asyncio.wait_for(queue.aclose(), DEADLINE_SECONDS)
    assert cancelled.is_set()
    with pytest.raises(RuntimeError):
        await queue.enqueue("forever", key="k2", payload={})


async def test_in_process_unknown_job_fails_at_the_caller() -> None:
    queue = InProcessTaskQueue(JobRegistry())
    with pytest.raises(LookupError):
        await queue.enqueue("nope", key="k", payload={})


def test_registry_refuses_a_second_handler_for_a_name() -> None:
    async def handler(payload: JobPayload) -> None:
        return None

    registry = JobRegistry()
    registry.register("a", handler)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("a", handler)
    assert registry.names() == ["a"]
    assert registry.get("a") is handler


# SAQ only.


async def test_saq_outage_is_dependency_unavailable() -> None:
    queue = SaqTaskQueue(redis_url=CLOSED_PORT_URL, name="fwbtest-outage")
    try:
        with pytest.raises(DependencyUnavailable):
            await queue.ping()
        with pytest.raises(DependencyUnavailable):
            await queue.enqueue("any", key="k", payload={})
    finally:
        await asyncio.wait_for(queue.aclose(), DEADLINE_SECONDS)


async def test_saq_stop_lets_a_running_job_finish(redis_server: str, saq_name: str) -> None:
    started = asyncio.Event()
    finished: list[JobPayload] = []

    async def slow(payload: JobPayload) -> None:
        started.set()
        await asyncio.sleep(0.5)
        finished.append(payload)

    registry = JobRegistry()
    registry.register("slow", slow)
    queue = SaqTaskQueue(redis_url=redis_server, name=saq_name)
    stop = asyncio.Event()
    worker = asyncio.create_task(
        run_worker(redis_url=redis_server, registry=registry, name=saq_name, stop=stop)
    )
    try:
        await queue.enqueue("slow", key="k", payload={"n": 1})
        await asyncio.wait_for(started.wait(), DEADLINE_SECONDS)
        stop.set()
        await asyncio.wait_for(worker, DEADLINE_SECONDS)
    finally:
        stop.set()
        await asyncio.wait_for(worker, DEADLINE_SECONDS)
        await queue.aclose()
    assert finished == [{"n": 1}]


async def test_saq_a_job_cut_off_at_stop_runs_again_on_the_next_worker(
    redis_server: str, saq_name: str
) -> None:
    runs: list[str] = []
    started = asyncio.Event()

    async def hangs(payload: JobPayload) -> None:
        runs.append("first")
        started.set()
        await asyncio.Event().wait()

    async def completes(payload: JobPayload) -> None:
        runs.append("second")

    queue = SaqTaskQueue(redis_url=redis_server, name=saq_name)
    try:
        await queue.enqueue("job", key="k", payload={})
        for handler, grace in ((hangs, 0.2), (completes, 5.0)):
            registry = JobRegistry()
            registry.register("job", handler)
            stop = asyncio.Event()
            worker = asyncio.create_task(
                run_worker(
                    redis_url=redis_server,
                    registry=registry,
                    name=saq_name,
                    stop=stop,
                    grace_seconds=grace,
                )
            )
            try:
                if handler is hangs:
                    await asyncio.wait_for(started.wait(), DEADLINE_SECONDS)
                else:
                    await eventually(lambda: "second" in runs, "the next worker ran the job")
            finally:
                stop.set()
                await asyncio.wait_for(worker, DEADLINE_SECONDS)
    finally:
        await queue.aclose()
    assert runs == ["first", "second"]


# The worker process: builds a registry whose job writes a marker file, then consumes the queue.
WORKER_SCRIPT = """
import asyncio, os, sys
from pathlib import Path

from filewallball.adapters.jobs import run_worker
from filewallball.domain.jobs import JobRegistry

redis_url, name, marker_dir = sys.argv[1:4]


async def touch(payload):
    target = Path(marker_dir) / str(payload["marker"])
    temporary = target.with_suffix(".tmp")
    temporary.write_text(str(os.getpid()))
    temporary.rename(target)  # the test never sees a half-written marker


registry = JobRegistry()
registry.register("touch", touch)
asyncio.run(run_worker(redis_url=redis_url, registry=registry, name=name, grace_seconds=5))
"""


async def test_a_separate_worker_process_consumes_the_queue(
    redis_server: str, saq_name: str, tmp_path: Path
) -> None:
    queue = SaqTaskQueue(redis_url=redis_server, name=saq_name)
    # Queued before any worker runs: jobs wait on Redis for one to start.
    await queue.enqueue("touch", key="early", payload={"marker": "early"})
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        WORKER_SCRIPT,
        redis_server,
        saq_name,
        str(tmp_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output = b""
    try:
        await queue.enqueue("touch", key="late", payload={"marker": "late"})
        await eventually(
            lambda: (tmp_path / "early").exists() and (tmp_path / "late").exists(),
            "the worker process ran both jobs",
        )
    finally:
        if worker.returncode is None:
            worker.terminate()  # SIGTERM: the worker stops gracefully
        try:
            output, _ = await asyncio.wait_for(worker.communicate(), DEADLINE_SECONDS)
        except TimeoutError:
            worker.kill()
            await worker.wait()
        await queue.aclose()
    assert worker.returncode == 0, output.decode(errors="replace")
    for marker in ("early", "late"):
        assert int((tmp_path / marker).read_text()) == worker.pid != os.getpid()
