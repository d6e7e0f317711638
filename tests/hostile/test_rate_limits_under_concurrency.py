"""Rate limits under concurrency: a burst never gets past the budget."""

from __future__ import annotations

import asyncio

from tests.integration.conftest import AppFactory


async def test_a_burst_of_twice_the_budget_admits_exactly_the_budget(
    make_client: AppFactory,
) -> None:
    async with make_client(rate_limit="50/minute") as client:
        answers = await asyncio.gather(*(client.get("/files") for _ in range(200)))
    statuses = [answer.status_code for answer in answers]
    assert statuses.count(200) == 50
    assert statuses.count(429) == 150
    for refused in (a for a in answers if a.status_code == 429):
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert refused.headers["content-type"] == "application/problem+json"
