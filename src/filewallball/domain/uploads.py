"""An upload on its way in, and the meter its bytes stream through (size, hash, type, scan)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime

from filewallball.domain.errors import FileTooLarge
from filewallball.domain.models import ContentType, Sha256, TypePolicy, Visibility
from filewallball.domain.policies import Quota
from filewallball.domain.ports import ScanSession, Sniffer

# Enough for every format's signature and for libmagic to tell text from binary; it takes
# milliseconds on 64 KiB of text or of unknown binary, microseconds to a millisecond on 16 KiB.
SNIFF_BYTES = 16 * 1024


@dataclass
class UploadRequest:
    """An upload on its way in. Fields other than `chunks` are final once `chunks` is exhausted
    (a multipart form may carry fields after the file)."""

    filename: str
    chunks: AsyncIterator[bytes]
    visibility: Visibility = Visibility.PRIVATE
    expected_sha256: Sha256 | None = None
    declared_size: int | None = None
    expires_at: datetime | None = None
    expires_in_seconds: int | None = None


@dataclass
class StreamMeter:
    """Counts, hashes, sniffs and scans bytes as they stream past, stopping at the limits."""

    limit: int
    quota: int | None
    sniffer: Sniffer
    policy: TypePolicy
    scan: ScanSession | None
    size: int = 0
    content_type: ContentType | None = None
    _hasher: hashlib._Hash = field(default_factory=hashlib.sha256)
    _head: bytearray = field(default_factory=bytearray)

    async def watch(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for chunk in chunks:
            if not chunk:
                continue
            self.size += len(chunk)
            if self.size > self.limit:
                raise FileTooLarge(self.limit)
            if self.quota is not None and self.size > self.quota:
                Quota.check_size(self.size, self.quota)
            self._hasher.update(chunk)
            if self.content_type is None:
                self._head += chunk[: SNIFF_BYTES - len(self._head)]
                if len(self._head) >= SNIFF_BYTES:
                    await self._decide_type()
            if self.scan is not None:
                await self.scan.feed(chunk)
            yield chunk
        if self.content_type is None:
            await self._decide_type()

    async def _decide_type(self) -> None:
        content_type = await self.sniffer.sniff(bytes(self._head))
        self.policy.check(content_type)
        self.content_type = content_type
        self._head = bytearray()

    @property
    def sha256(self) -> Sha256:
        return Sha256.from_digest(self._hasher.digest())
