"""The rules an upload must pass besides its bytes: when it expires, and how much its owner may keep."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from filewallball.domain.errors import InvalidRequest, QuotaExceeded
from filewallball.domain.models import LATEST_INSTANT


@dataclass(frozen=True, slots=True)
class ExpiryPolicy:
    """The server's default lifetime for new files, and the longest one a client may ask for."""

    default_seconds: int | None = None
    max_seconds: int | None = None

    def expires_at(
        self, now: datetime, *, at: datetime | None, in_seconds: int | None
    ) -> datetime | None:
        """When a file uploaded `now` expires: asked for (`at` or `in_seconds`), or the default;
        never past the maximum. InvalidRequest for an impossible ask."""
        if at is not None and in_seconds is not None:
            raise InvalidRequest("give expires_at or expires_in, not both", code="invalid_expiry")
        if at is not None and at >= LATEST_INSTANT:
            raise InvalidRequest("expires_at must be before 9999-01-01", code="invalid_expiry")
        expires_at = at
        if in_seconds is not None:
            if in_seconds < 1:
                raise InvalidRequest("expires_in must be at least 1 second", code="invalid_expiry")
            # Compared before adding: now + a huge timedelta overflows.
            if in_seconds >= (LATEST_INSTANT - now).total_seconds():
                raise InvalidRequest("expires_in reaches past 9999-01-01", code="invalid_expiry")
            expires_at = now + timedelta(seconds=in_seconds)
        explicit = expires_at is not None
        if not explicit and self.default_seconds is not None:
            expires_at = now + timedelta(seconds=self.default_seconds)
        if expires_at is not None and expires_at <= now:
            raise InvalidRequest("expires_at is in the past", code="invalid_expiry")
        if self.max_seconds is not None:
            limit = now + timedelta(seconds=self.max_seconds)
            if explicit and expires_at is not None and expires_at > limit:
                raise InvalidRequest(
                    f"files may live at most {self.max_seconds} seconds", code="invalid_expiry"
                )
            expires_at = min(expires_at or limit, limit)
        return expires_at


@dataclass(frozen=True, slots=True)
class Reservation:
    """Room an upload in progress holds in its owner's quota: one file, at most `bytes` bytes
    (None: no byte quota, any size)."""

    id: str
    owner: str
    bytes: int | None


@dataclass(frozen=True, slots=True)
class Quota:
    """What one owner may keep stored: files and bytes (None: no limit)."""

    files: int | None = None
    bytes: int | None = None

    @property
    def limited(self) -> bool:
        return self.files is not None or self.bytes is not None

    def room(self, *, stored_files: int, stored_bytes: int) -> int | None:
        """Bytes still allowed (None: no byte limit); QuotaExceeded when nothing more fits."""
        if self.files is not None and stored_files >= self.files:
            raise QuotaExceeded(f"the quota of {self.files} files is reached")
        if self.bytes is None:
            return None
        return max(0, self.bytes - stored_bytes)

    @staticmethod
    def check_size(size: int, room: int | None) -> None:
        """QuotaExceeded when `size` bytes do not fit in `room`."""
        if room is not None and size > room:
            raise QuotaExceeded(f"the upload passes the {room} bytes left in the quota")
