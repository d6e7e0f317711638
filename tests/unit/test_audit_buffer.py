"""BufferedAuditLog: entries leave the request path, arrive in order, and are never dropped."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest
from structlog.testing import capture_logs

from filewallball.adapters.audit_buffer import BufferedAuditLog
from filewallball.domain.errors import DependencyUnavailable
from filewallball.domain.security import AuditEntry, AuditQuery, Outcome
from tests.fakes import FakeAuditLog

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def entry(n: int) -> AuditEntry:
    return AuditEntry(at=T0, action="file.download", outcome=Outcome.SUCCESS, target=f"f{n}")


def targets(log: FakeAuditLog) -> list[str | None]:
    return [e.target for e in log.entries]


async def test_entries_are_written_in_the_background_in_order() -> None:
    store = FakeAuditLog()
    log = BufferedAuditLog(store, flush_interval=0.05)
    with capture_logs() as events:
        for n in range(5):
            await log.record(entry(n))
    assert store.entries == []  # not on the request path
    assert [e["target"] for e in events if e["event"] == "audit"] == [f"f{n}" for n in range(5)]
    await asyncio.sleep(0.2)
    assert targets(store) == [f"f{n}" for n in range(5)]
    await log.aclose()


async def test_a_full_batch_is_written_without_waiting_for_the_interval() -> None:
    store = FakeAuditLog()
    log = BufferedAuditLog(store, flush_interval=5, batch_size=3)
    for n in range(3):
        await log.record(entry(n))
    await asyncio.sleep(0.05)
    assert len(store.entries) == 3
    await log.aclose()


async def test_queries_and_flush_see_every_entry_recorded_before() -> None:
    store = FakeAuditLog()
    log = BufferedAuditLog(store, flush_interval=5)
    await log.record(entry(1))
    assert [e.target for e in await log.query(AuditQuery())] == ["f1"]
    await log.record(entry(2))
    await log.flush()
    assert targets(store) == ["f1", "f2"]
    await log.aclose()


async def test_entries_survive_a_database_outage_and_are_written_once_it_ends() -> None:
    store = FakeAuditLog()
    store.fail_writes = True
    log = BufferedAuditLog(store, flush_interval=0.02)
    with capture_logs() as events:
        for n in range(4):
            await log.record(entry(n))
        await asyncio.sleep(0.2)  # several failed attempts
        assert store.entries == []
        store.fail_writes = False
        await asyncio.sleep(0.2)
    assert targets(store) == [f"f{n}" for n in range(4)]
    names = [e["event"] for e in events if e["event"] != "audit"]
    assert names == ["audit_write_failed", "audit_write_recovered"]  # logged once, not per try
    await log.aclose()


async def test_a_full_backlog_refuses_new_work_instead_of_dropping_entries() -> None:
    store = FakeAuditLog()
    store.fail_writes = True
    log = BufferedAuditLog(store, flush_interval=5, max_pending=3)
    for n in range(3):
        await log.record(entry(n))
    with pytest.raises(DependencyUnavailable):
        await log.record(entry(3))
    store.fail_writes = False
    await log.flush()
    assert targets(store) == ["f0", "f1", "f2"]
    await log.record(entry(3))  # room again
    await log.aclose()
    assert targets(store) == ["f0", "f1", "f2", "f3"]


async def test_close_writes_what_is_left_and_later_entries_go_straight_through() -> None:
    store = FakeAuditLog()
    log = BufferedAuditLog(store, flush_interval=5)
    await log.record(entry(1))
    await log.aclose()
    assert targets(store) == ["f1"]
    await log.record(entry(2))
    assert targets(store) == ["f1", "f2"]


async def test_close_with_the_database_down_reports_what_it_could_not_write() -> None:
    store = FakeAuditLog()
    log = BufferedAuditLog(store, flush_interval=5)
    await log.record(entry(1))
    store.fail_writes = True
    with capture_logs() as events:
        await log.aclose()
    lost = [e for e in events if e["event"] == "audit_entries_lost"]
    assert lost[0]["count"] == 1


class SlowAuditLog(FakeAuditLog):
    """A database whose batch writes can be held in the middle, as a slow commit is."""

    def __init__(self) -> None:
        super().__init__()
        self.writing = asyncio.Event()
        self.release = asyncio.Event()
        self.interrupted = False

    async def record_many(self, entries: Sequence[AuditEntry]) -> None:
        self.writing.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.interrupted = True  # a real transaction would be left half done
            raise
        await super().record_many(entries)


async def test_close_lets_a_batch_being_written_finish_instead_of_cancelling_it() -> None:
    store = SlowAuditLog()
    log = BufferedAuditLog(store, flush_interval=0.01)
    await log.record(entry(1))
    await store.writing.wait()  # the writer is in the middle of its batch
    await log.record(entry(2))
    closing = asyncio.create_task(log.aclose())
    await asyncio.sleep(0.05)
    assert not closing.done()  # it waits for the batch rather than interrupting it
    store.release.set()
    with capture_logs() as events:
        await asyncio.wait_for(closing, timeout=5)
    assert not store.interrupted
    assert targets(store) == ["f1", "f2"]
    assert not [e for e in events if e["event"] == "audit_entries_lost"]


async def test_close_does_not_wait_out_the_retry_pause_of_a_failing_writer() -> None:
    store = FakeAuditLog()
    store.fail_writes = True
    log = BufferedAuditLog(store, flush_interval=30)
    await log.record(entry(1))
    log._wake.set()  # the writer tries now, fails, and pauses for the interval
    await asyncio.sleep(0.05)
    with capture_logs():
        await asyncio.wait_for(log.aclose(), timeout=5)
