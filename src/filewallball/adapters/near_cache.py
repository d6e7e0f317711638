"""Per-process copies of Redis cache entries, kept exact by a shared invalidation log.

A lookup served from process memory costs no round trip, yet a revoked key or a deleted file
must be refused at once by every replica. So every write that changes a cached entry (a
tombstone, a delete) also bumps a sequence number in Redis and pushes the entry's name onto a
capped log, in the same script as the write. A request first *syncs*: one round trip reads the
sequence and the names written since this process last looked, and drops those copies. Any
write that finished before the request arrived is therefore seen by it, on every replica.

Syncs are grouped: a request arriving while a sync is in flight waits for the next one, which
starts when the current one ends, so one round trip serves every request that came meanwhile,
and each of them is still synced by a round trip that began after it arrived.

Copies are used only by the request that synced, for `_SYNC_VALID_SECONDS`; everything else
(a worker, the CLI, a request while Redis is down) reads Redis as before. After a Redis restart
or when this process fell more than `_LOG_LENGTH` writes behind, every copy is dropped.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict
from collections.abc import Sequence
from contextvars import ContextVar

import redis.asyncio
import structlog
from redis.exceptions import RedisError

from filewallball.adapters.memory import live_entry
from filewallball.adapters.metrics import NEAR_SYNCS

_FAILURES = (RedisError, OSError)
_log = structlog.get_logger()

# Names kept in the log: a process further behind drops all its copies.
_LOG_LENGTH = 1024
# A request uses copies for this long after its sync (a handler reads the cache at its start).
_SYNC_VALID_SECONDS = 2.0
_REDIS_TIMEOUT_SECONDS = 0.5
# Local hits reach the shared counts (GET /stats/cache) within this delay.
_HITS_FLUSH_SECONDS = 0.1

# KEYS: sequence, log, log id, then the stats hashes; ARGV: known id, known sequence, log
# length, a new log id (used if there is none, e.g. after a Redis restart), then the local hits
# per stats hash. Returns {id, sequence, names or false}; false means "too far behind, or
# another log: drop everything".
_SYNC = """
for i = 4, #KEYS do
  local hits = tonumber(ARGV[i + 1])
  if hits > 0 then redis.call('HINCRBY', KEYS[i], 'hits', hits) end
end
redis.call('SET', KEYS[3], ARGV[4], 'NX')
local id = redis.call('GET', KEYS[3])
local seq = tonumber(redis.call('GET', KEYS[1]) or '0')
local known = tonumber(ARGV[2])
if id ~= ARGV[1] or seq < known or seq - known > tonumber(ARGV[3]) then
  return {id, seq, false}
end
if seq == known then return {id, seq, {}} end
return {id, seq, redis.call('LRANGE', KEYS[2], 0, seq - known - 1)}
"""

# KEYS: the entry, sequence, log, log id; ARGV: new log id (if none), log length, mode
# ('set' or 'del'), value, ttl in seconds. The write and its log record are one step.
_WRITE = """
if ARGV[3] == 'set' then
  redis.call('SET', KEYS[1], ARGV[4], 'EX', ARGV[5])
else
  redis.call('DEL', KEYS[1])
end
redis.call('SET', KEYS[4], ARGV[1], 'NX')
redis.call('INCR', KEYS[2])
redis.call('LPUSH', KEYS[3], KEYS[1])
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[2]) - 1)
return 1
"""

# When the current request synced (monotonic seconds), or None.
_synced_at: ContextVar[float | None] = ContextVar("fwb_near_cache_synced_at", default=None)


class NearCache:
    """Copies of Redis entries in this process, by their full Redis key, plus the shared log."""

    def __init__(
        self, client: redis.asyncio.Redis, *, prefix: str, max_entries: int = 10_000
    ) -> None:
        self._client = client
        self._sequence_key = f"{prefix}near:seq"
        self._log_key = f"{prefix}near:log"
        self._id_key = f"{prefix}near:id"
        self._sync_script = client.register_script(_SYNC)
        self._write_script = client.register_script(_WRITE)
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._max_entries = max_entries
        self._known_id = ""
        self._known_seq = 0
        # Hits served here, per stats hash, not yet added to the shared counts.
        self._hits: dict[str, int] = {}
        self._flush_scheduled = False
        self._next: asyncio.Future[bool] | None = None
        self._runner: asyncio.Task[None] | None = None
        self._degraded = False
        # Round trips made, and those that failed (Redis down or slow: those requests read
        # Redis or the database instead of copies).
        self.syncs = 0
        self.failures = 0

    # -- requests -------------------------------------------------------------------------

    async def sync(self) -> bool:
        """Bring this process's copies up to date for the current request; whether it could."""
        batch = self._next
        if batch is None:
            batch = self._next = asyncio.get_running_loop().create_future()
            if self._runner is None:
                self._runner = asyncio.create_task(self._run())
        ok = await asyncio.shield(batch)
        _synced_at.set(time.monotonic() if ok else None)
        return ok

    def active(self) -> bool:
        """Whether the current request may use copies (it synced, moments ago)."""
        synced = _synced_at.get()
        return synced is not None and time.monotonic() - synced < _SYNC_VALID_SECONDS

    def get(self, key: str, *, stats_key: str) -> bytes | None:
        """The copy of `key`, when the current request may use one; counts it as a hit."""
        if not self.active() or (value := live_entry(self._entries, key)) is None:
            return None
        self._hits[stats_key] = self._hits.get(stats_key, 0) + 1
        if not self._flush_scheduled:
            # Counted into the shared hash by the next sync, or within this delay if none comes.
            self._flush_scheduled = True
            asyncio.get_running_loop().call_later(_HITS_FLUSH_SECONDS, self._flush_hits)
        return value

    def _flush_hits(self) -> None:
        self._flush_scheduled = False
        if self._hits and self._next is None:
            self._next = asyncio.get_running_loop().create_future()
            if self._runner is None:
                self._runner = asyncio.create_task(self._run())

    def keep(self, key: str, value: bytes, *, expires: float) -> None:
        """Remember what Redis said `key` holds, until `expires` (monotonic), if in a synced request."""
        if not self.active():
            return
        self._entries[key] = (expires, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    # -- writes ---------------------------------------------------------------------------

    async def write(self, key: str, value: bytes | None, *, ttl_seconds: int = 0) -> None:
        """SET (or DEL when `value` is None) `key` and log it, in one step; raises on failure."""
        self._entries.pop(key, None)
        args: list[str | bytes | int] = [secrets.token_hex(8), _LOG_LENGTH]
        args += ["set", value, ttl_seconds] if value is not None else ["del"]
        await self._write_script(
            keys=[key, self._sequence_key, self._log_key, self._id_key], args=args
        )

    # -- the sync -------------------------------------------------------------------------

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
        hits = self._hits
        self._hits = {}
        try:
            async with asyncio.timeout(_REDIS_TIMEOUT_SECONDS):
                log_id, seq, names = await self._sync_script(
                    keys=[self._sequence_key, self._log_key, self._id_key, *hits],
                    args=[
                        self._known_id,
                        self._known_seq,
                        _LOG_LENGTH,
                        secrets.token_hex(8),
                        *hits.values(),
                    ],
                )
        except BaseException as error:
            # Copies are not trusted again until a sync succeeds, and then only what it allows.
            self._entries.clear()
            self._known_id = ""
            if not isinstance(error, _FAILURES):
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
        self._apply(log_id, int(seq), names)
        return True

    def _apply(self, log_id: bytes, seq: int, names: Sequence[bytes] | None) -> None:
        if names is None:
            self._entries.clear()
        else:
            for name in names:
                self._entries.pop(name.decode(), None)
        self._known_id = log_id.decode()
        self._known_seq = seq
