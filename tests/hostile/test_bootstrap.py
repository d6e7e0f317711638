"""Several processes bootstrapping one database at once make exactly one admin key (issue 13).

Workers (`serve --workers N`) and replicas start together; without FWB_BOOTSTRAP_ADMIN_KEY each
found no key and created its own. Here several apps start on one database at once, through the
real lifespan (migration, bootstrap, admin.key), on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from filewallball.adapters.sql import upgrade
from filewallball.entrypoints.http.app import create_app
from filewallball.settings import Settings
from tests.integration.conftest import GENEROUS

STARTS = 6


@pytest.fixture(params=["sqlite", "postgres"])
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """One migrated database, no preset admin key, one server secret (as replicas must have).

    Migrated beforehand: migrations are serialised, and would space the starts out.
    """
    url = (
        request.getfixturevalue("pg_url")
        if request.param == "postgres"
        else Settings(data_dir=tmp_path / "db").resolved_database_url
    )
    upgrade(url)
    return {"database_url": url, "auto_migrate": False, "secret_key": "s" * 40, **GENEROUS}


async def _start_together(settings: list[Settings]) -> list[int]:
    """Start every app at once; each one's count of admin keys, seen with admin.key's key."""
    apps = [create_app(s) for s in settings]
    async with AsyncExitStack() as stack:
        await asyncio.gather(
            *(stack.enter_async_context(app.router.lifespan_context(app)) for app in apps)
        )
        counts = []
        for app, each in zip(apps, settings, strict=True):
            key_file = each.admin_key_file
            if not key_file.exists():
                continue
            key = key_file.read_text().strip()
            transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
            async with httpx.AsyncClient(
                transport=transport,
                base_url="http://testserver",
                headers={"authorization": f"Bearer {key}"},
            ) as client:
                listed = await client.get("/admin/keys", params={"limit": 100})
                assert listed.status_code == 200, listed.text
                counts.append(sum(1 for k in listed.json()["items"] if k["role"] == "admin"))
        return counts


def test_workers_on_one_data_dir_make_one_admin_key(shared: dict[str, Any], tmp_path: Path) -> None:
    settings = [Settings(data_dir=tmp_path, **shared) for _ in range(STARTS)]
    counts = asyncio.run(_start_together(settings))
    # admin.key holds a working key, and it sees exactly one admin key.
    assert counts and set(counts) == {1}


def test_replicas_on_one_database_make_one_admin_key(
    shared: dict[str, Any], tmp_path: Path
) -> None:
    settings = [Settings(data_dir=tmp_path / f"replica{i}", **shared) for i in range(STARTS)]
    counts = asyncio.run(_start_together(settings))
    # Only the replica that made the key has admin.key (its own data dir): it works, and is
    # the only admin key.
    assert counts == [1]
