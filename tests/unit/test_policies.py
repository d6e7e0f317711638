"""Expiry and quota rules, on their own."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from filewallball.domain.errors import InvalidRequest, QuotaExceeded
from filewallball.domain.policies import ExpiryPolicy, Quota

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def test_expiry_takes_what_is_asked_or_the_default_and_never_passes_the_maximum() -> None:
    policy = ExpiryPolicy(default_seconds=60, max_seconds=3600)
    assert policy.expires_at(NOW, at=None, in_seconds=None) == NOW + timedelta(seconds=60)
    assert policy.expires_at(NOW, at=None, in_seconds=120) == NOW + timedelta(seconds=120)
    assert policy.expires_at(NOW, at=NOW + timedelta(minutes=5), in_seconds=None) == NOW + (
        timedelta(minutes=5)
    )
    with pytest.raises(InvalidRequest, match="at most 3600"):
        policy.expires_at(NOW, at=None, in_seconds=3601)
    assert ExpiryPolicy().expires_at(NOW, at=None, in_seconds=None) is None
    assert ExpiryPolicy(max_seconds=10).expires_at(NOW, at=None, in_seconds=None) == NOW + (
        timedelta(seconds=10)
    )


@pytest.mark.parametrize(
    ("at", "in_seconds"),
    [(NOW, None), (NOW - timedelta(seconds=1), None), (None, 0), (None, -5), (NOW, 10)],
)
def test_impossible_expiries_are_invalid_requests(
    at: datetime | None, in_seconds: int | None
) -> None:
    with pytest.raises(InvalidRequest) as raised:
        ExpiryPolicy().expires_at(NOW, at=at, in_seconds=in_seconds)
    assert raised.value.code == "invalid_expiry"


def test_quota_room() -> None:
    assert not Quota().limited
    assert Quota().room(stored_files=10**6, stored_bytes=10**12) is None
    assert Quota(bytes=100).room(stored_files=3, stored_bytes=40) == 60
    assert Quota(bytes=100).room(stored_files=3, stored_bytes=140) == 0
    with pytest.raises(QuotaExceeded, match="3 files"):
        Quota(files=3).room(stored_files=3, stored_bytes=0)
    Quota.check_size(60, 60)
    Quota.check_size(10**9, None)
    with pytest.raises(QuotaExceeded):
        Quota.check_size(61, 60)
