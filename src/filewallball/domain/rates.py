"""A rate limit rule ("600/minute"): how many requests a client may make per window."""

from __future__ import annotations

import re
from dataclasses import dataclass

# The `limits` notation for one limit: "600/minute", "10 per 2 seconds", "5/hour".
_RULE = re.compile(
    r"^\s*([0-9]+)\s*(?:/|\s*per\s*)\s*([0-9]+)?\s*(second|minute|hour|day|month|year)s?\s*$",
    re.IGNORECASE,
)
_EXAMPLE = "expected one limit such as '600/minute' or '10 per 2 seconds'"
_SECONDS = {
    "second": 1,
    "minute": 60,
    "hour": 3600,
    "day": 86_400,
    "month": 30 * 86_400,
    "year": 365 * 86_400,
}


@dataclass(frozen=True, slots=True)
class RateDecision:
    """What a rate limiter decided for one request, and what the RateLimit headers say."""

    allowed: bool
    limit: int
    remaining: int
    reset_after_seconds: int
    window_seconds: int


@dataclass(frozen=True, slots=True)
class RateRule:
    """`amount` requests per `multiples` `granularity` (second, minute, ...), as written in `text`."""

    amount: int
    multiples: int
    granularity: str
    text: str

    @classmethod
    def parse(cls, text: str) -> RateRule:
        """The rule `text` states, or ValueError saying what is wrong with it."""
        match = _RULE.fullmatch(text)
        if match is None:
            raise ValueError(f"invalid rate limit {text!r}: {_EXAMPLE}")
        amount, multiples, granularity = match.groups()
        if int(amount) < 1:
            raise ValueError(
                f"invalid rate limit {text!r}: the limit must allow at least 1 request"
            )
        return cls(int(amount), int(multiples or 1), granularity.lower(), text)

    @property
    def window_seconds(self) -> int:
        return self.multiples * _SECONDS[self.granularity]

    def __str__(self) -> str:
        return self.text
