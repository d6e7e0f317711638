"""The shared epoch of the Redis caches, and per-process copies of their entries.

Exactness rests on two rules, each with one mechanism:

1. **The epoch lease.** Every Redis entry lives under an epoch, a random id kept in Redis with a
   short lease (`LEASE_SECONDS`) that every successful round trip renews. A Redis restart loses
   the epoch, an outage lets its lease lapse: either way the next round trip starts a new epoch,
   and nothing cached before it can be read again. A writer that cannot deliver an invalidation
   (Redis unreachable) therefore waits, retrying, until either the invalidation lands or the lease
   has surely lapsed (RedisCache.invalidate): when it answers, no copy it might have missed is
   readable anywhere. A fill carries the epoch of the lookup that preceded its database read and
   is refused under any other, so a read that began before a lapse cannot refill an old value.
2. **The invalidation log.** Copies kept in process memory cost no round trip, yet must be
   dropped at once when another process invalidates them. Every invalidation bumps a sequence
   number and logs the entry's name, in the same script as the write. The first read of an HTTP
   request (request_scope: the edge marks where each begins) *syncs*: one round trip reads the
   epoch, the sequence and the names logged since this process last looked, and drops those
   copies. Any invalidation that finished before the request's first read is therefore seen by
   it. Code outside a request (a job, the CLI) reads Redis itself.

Syncs are grouped: a read arriving while a sync is in flight waits for the next one, which starts
when the current one ends, so one round trip serves every request that came meanwhile, each still
synced by a round trip that began after it asked. A request uses copies for at most
`_SYNC_VALID_SECONDS` after its sync, then syncs again. A failed sync drops every copy; a new
epoch, or a process more than `LOG_LENGTH` invalidations behind, drops them all too.

The scripts build entry names from the epoch inside Redis: a single Redis (or a primary with
replicas), not Redis Cluster.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict
from collections.abc import MutableMapping, Sequence
from contextvars import ContextVar

import redis.asyncio
import structlog

from filewallball.adapters.metrics import NEAR_SYNCS
from filewallball.adapters.redis.client import REDIS_FAILURES
from filewallball.request_scope import RequestToken, current_request

# How long the epoch outlives the last round trip that renewed it. A writer that cannot reach
# Redis waits this long (plus a margin) before it answers.
LEASE_SECONDS = 2.0
_log = structlog.get_logger()

# Names kept in the log: a process further behind drops all its copies.
LOG_LENGTH = 1024
# A task uses copies for this long after its sync (a handler reads the cache at its start).
_SYNC_VALID_SECONDS = 2.0
_REDIS_TIMEOUT_SECONDS = 0.5


# KEYS: epoch, sequence, log; ARGV: known epoch, known sequence, log length, a new epoch (used
# when there is none), lease in ms. Returns {epoch, sequence, names or false}; false means
# "another epoch, or too far behind: drop everything".
def renewed_epoch(*, lease: str, new: str) -> str:
    """Lua that sets `epoch` to the epoch in KEYS[1], renewing its lease of `lease` ms, or
    starting the epoch `new` when there is none (Redis restarted, or the lease lapsed)."""
    return f"""
local epoch = redis.call('GET', KEYS[1])
if epoch then
  redis.call('PEXPIRE', KEYS[1], {lease})
else
  epoch = {new}
  redis.call('SET', KEYS[1], epoch, 'PX', {lease})
end
"""


_SYNC = (
    renewed_epoch(lease="ARGV[5]", new="ARGV[4]")
    + """
local seq = tonumber(redis.call('GET', KEYS[2]) or '0')
local known = tonumber(ARGV[2])
if epoch ~= ARGV[1] or seq < known or seq - known > tonumber(ARGV[3]) then
  return {epoch, seq, false}
end
if seq == known then return {epoch, seq, {}} end
return {epoch, seq, redis.call('LRANGE', KEYS[3], 0, seq - known - 1)}
"""
)

# The request the current context synced for, by which near cache, and when (monotonic seconds).
_synced: ContextVar[tuple[RequestToken, NearCache, float] | None] = ContextVar(
    "fwb_near_cache_synced", default=None
)


class Keyspace:
    """The Redis names every process using `prefix` agrees on (made once: they are read on
    every lookup)."""

    __slots__ = ("entries", "epoch", "log", "sequence")

    def __init__(self, prefix: str) -> None:
        self.epoch = f"{prefix}cache:epoch"
        self.sequence = f"{prefix}cache:seq"
        self.log = f"{prefix}cache:log"
        # What entry names start with; the epoch and the entry's own name follow.
        self.entries = f"{prefix}cache:e:"

    def entry(self, epoch: str, suffix: str) -> str:
        return f"{self.entries}{epoch}:{suffix}"


def live_entry(entries: MutableMapping[str, tuple[float, bytes]], key: str) -> bytes | None:
    """The value of `key` in `entries` (expiry in monotonic seconds, value), dropped if expired."""
    entry = entries.get(key)
    if entry is None:
        return None
    expires, value = entry
    if expires <= time.monotonic():
        del entries[key]
        return None
    return value


def new_epoch() -> str:
    return secrets.token_hex(8)


class NearCache:
    """Copies of Redis entries in this process, by their full Redis name, plus the shared log."""

    def __init__(
        self, client: redis.asyncio.Redis, *, prefix: str, max_entries: int = 10_000
    ) -> None:
        self.keyspace = Keyspace(prefix)
        self._sync_script = client.register_script(_SYNC)
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._max_entries = max_entries
        self._known_epoch = ""
        self._known_seq = 0
        self._next: asyncio.Future[bool] | None = None
        self._runner: asyncio.Task[None] | None = None
        self._degraded = False
        # Round trips made, and those that failed (Redis down or slow: those requests read
        # Redis or the database instead of copies).
        self.syncs = 0
        self.failures = 0

    async def epoch(self) -> str | None:
        """The epoch the current request may use copies of, syncing on its first read; None
        outside a request, or when the sync failed (the caller then reads Redis)."""
        request = current_request()
        if request is None:
            return None
        mark = _synced.get()
        fresh = (
            mark is not None
            and mark[0] is request
            and mark[1] is self
            and time.monotonic() - mark[2] < _SYNC_VALID_SECONDS
        )
        if not fresh and not await self.sync():
            return None
        return self._known_epoch or None

    def copy(self, name: str) -> bytes | None:
        """The copy of the entry `name`; only for a task that `epoch()` answered."""
        return live_entry(self._entries, name)

    def keep(self, epoch: str, seq: int, name: str, value: bytes, *, expires: float) -> None:
        """Remember what Redis said `name` holds, until `expires` (monotonic).

        Only an answer as new as this process's copies: in the epoch it knows, at a sequence
        number no older than the last it synced to (a sync may since have applied, and so
        missed, an invalidation of `name` that came after the lookup).
        """
        if epoch != self._known_epoch or seq < self._known_seq:
            return
        self._entries[name] = (expires, value)
        self._entries.move_to_end(name)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def drop(self, name: str) -> None:
        """Forget the copy of `name` (this process just invalidated it)."""
        self._entries.pop(name, None)

    async def sync(self) -> bool:
        """Bring this process's copies up to date for the current request; whether it could."""
        batch = self._next
        if batch is None:
            batch = self._next = asyncio.get_running_loop().create_future()
            if self._runner is None:
                self._runner = asyncio.create_task(self._run())
        ok = await asyncio.shield(batch)
        request = current_request()
        _synced.set((request, self, time.monotonic()) if ok and request is not None else None)
        return ok

    async def _run(self) -> None:
        try:
            while (batch := self._next) is not None:
                self._next = None
                ok = False  # if cancelled (shutdown), nobody may use copies
                try:
                    ok = await self._sync_once()
                finally:
                    batch.set_result(ok)
        finally:
            self._runner = None
            if self._next is not None and not self._next.done():
                self._next.set_result(False)
            self._next = None

    async def _sync_once(self) -> bool:
        self.syncs += 1
        keys = self.keyspace
        try:
            async with asyncio.timeout(_REDIS_TIMEOUT_SECONDS):
                epoch, seq, names = await self._sync_script(
                    keys=[keys.epoch, keys.sequence, keys.log],
                    args=[
                        self._known_epoch,
                        self._known_seq,
                        LOG_LENGTH,
                        new_epoch(),
                        int(LEASE_SECONDS * 1000),
                    ],
                )
        except BaseException as error:
            # Copies are not trusted again until a sync succeeds, and then only what it allows.
            self._entries.clear()
            self._known_epoch = ""
            if not isinstance(error, REDIS_FAILURES):
                raise  # cancelled: the service is stopping
            self.failures += 1
            NEAR_SYNCS.labels("failed").inc()
            if not self._degraded:
                self._degraded = True
                _log.warning("near_cache_unavailable", error=str(error) or type(error).__name__)
            return False
        NEAR_SYNCS.labels("ok").inc()
        if self._degraded:
            self._degraded = False
            _log.info("near_cache_recovered")
        self._apply(epoch.decode(), int(seq), names)
        return True

    def _apply(self, epoch: str, seq: int, names: Sequence[bytes] | None) -> None:
        if names is None:
            self._entries.clear()
        else:
            for name in names:
                self._entries.pop(name.decode(), None)
        self._known_epoch = epoch
        self._known_seq = seq
