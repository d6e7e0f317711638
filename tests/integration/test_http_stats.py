"""Statistics from the audit log: the same numbers whichever replica answers."""

from __future__ import annotations

import asyncio

import httpx

from tests.integration.conftest import AppFactory
from tests.integration.test_http_files import PNG, assert_problem, post


async def test_errors_usage_and_storage_after_a_mixed_workload(make_client: AppFactory) -> None:
    # Each instance writes its audit entries at once, so the other sees them without waiting
    # (by default a replica's entries reach the database within FWB_AUDIT_FLUSH_INTERVAL).
    limit = {"max_upload_bytes": 1000, "audit_flush_interval": 0}
    async with (
        make_client(**limit) as admin,
        make_client(client_ip="10.9.8.7", **limit) as other,
    ):
        key = (await admin.post("/admin/keys", json={"name": "ann", "role": "uploader"})).json()[
            "key"
        ]
        ann = {"authorization": f"Bearer {key}"}
        first = (
            await other.post("/upload", files={"file": ("a.txt", b"a" * 100)}, headers=ann)
        ).json()
        await other.post(
            "/upload", files={"file": ("b.txt", b"a" * 100)}, headers=ann
        )  # same bytes
        assert_problem(
            await other.post("/upload", files={"file": ("big", b"x" * 1001)}, headers=ann),
            413,
            "file_too_large",
        )
        await other.get(f"/download/{first['id']}", headers=ann)
        await other.get(f"/download/{first['id']}", headers={**ann, "range": "bytes=0-9"})
        await post(admin, PNG, "p.png")

        # Asked of the other instance: computed from the shared database, not process memory.
        errors = (await admin.get("/stats/errors", params={"window": "1h"})).json()
        assert errors["succeeded"] == 3
        assert errors["failed"] == 1
        assert errors["errors_by_reason"] == {"file_too_large": 1}
        assert errors["success_rate"] == 0.75

        by_key = (await admin.get("/stats/usage", params={"window": "1h"})).json()["items"]
        ann_id = key.split("_")[1]
        ann_row = next(row for row in by_key if row["client"] == ann_id)
        assert ann_row == {
            "client": ann_id,
            "actor": "ann",
            "uploads": 2,
            "bytes_in": 200,
            "downloads": 2,
            "bytes_out": 110,
            "errors": 1,
        }
        by_ip = (await admin.get("/stats/usage", params={"by": "ip", "top": "1"})).json()["items"]
        assert [row["client"] for row in by_ip] == ["10.9.8.7"]

        storage = (await other.get("/stats/storage")).json()
        assert storage["files"] == 3
        assert storage["logical_bytes"] == 200 + len(PNG)
        assert storage["stored_bytes"] == 100 + len(PNG)
        assert storage["dedup_ratio"] > 1

        assert_problem(
            await admin.get("/stats/errors", params={"window": "forever"}), 400, "invalid_window"
        )
        assert_problem(await admin.get("/stats/usage", headers=ann), 403, "access_denied")


async def test_stats_of_an_empty_instance(client: httpx.AsyncClient) -> None:
    errors = (await client.get("/stats/errors")).json()
    assert errors["uploads"] == 0
    assert errors["success_rate"] is None
    assert (await client.get("/stats/storage")).json()["dedup_ratio"] == 1.0


async def test_cache_stats_follow_record_lookups(make_client: AppFactory) -> None:
    async with make_client() as first, make_client() as second:
        before = (await first.get("/stats/cache")).json()
        created = (await first.post("/upload", files={"file": ("a.txt", b"abc")})).json()
        for _ in range(3):
            assert (await second.get(f"/files/{created['id']}")).status_code == 200
        if not before["shared"]:
            # The embedded default caches nothing: a copy in one process could not see another
            # worker's change, and every read goes to the database.
            after = (await second.get("/stats/cache")).json()
            assert (after["backend"], after["hits"], after["misses"], after["entries"]) == (
                "none",
                0,
                0,
                0,
            )
            return
        # On Redis both instances count into one place. The other instance served its hits
        # from its own copy: they reach the shared counts within a tenth of a second.
        for _ in range(50):
            after = (await first.get("/stats/cache")).json()
            if after["hits"] - before["hits"] >= 2:
                break
            await asyncio.sleep(0.05)
        assert after["cache"] == "records"
        assert after["backend"] == "redis"
        hits = after["hits"] - before["hits"]
        misses = after["misses"] - before["misses"]
        assert (hits, misses) == (2, 1)
        assert after["entries"] >= 1
        assert 0 < after["ratio"] <= 1
        assert after["since"] is not None
        ann = (await first.post("/admin/keys", json={"name": "r", "role": "reader"})).json()
        assert_problem(
            await first.get("/stats/cache", headers={"authorization": f"Bearer {ann['key']}"}),
            403,
            "access_denied",
        )
