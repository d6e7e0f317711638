"""Expiry and the trash, end to end, with the purge job that removes the bytes."""

from __future__ import annotations

import asyncio
import gc
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from filewallball.container import Container
from filewallball.domain.maintenance import MAINTENANCE_JOB, SCRUB_JOB
from filewallball.entrypoints.http.app import create_app
from filewallball.settings import Settings
from tests.integration.conftest import ADMIN_KEY, AppFactory, blob_files
from tests.integration.test_http_files import assert_problem, post

# Stored bytes: these run on S3 too (tests/integration/conftest.py).
ON_S3 = True


def container_of(client: httpx.AsyncClient) -> Container:
    transport = client._transport
    assert isinstance(transport, httpx.ASGITransport)
    root: Container = transport.app.state.container  # type: ignore[attr-defined]
    return root


async def run_job(client: httpx.AsyncClient, name: str) -> None:
    """Run a housekeeping job the way a worker would."""
    await container_of(client).job_registry().get(name)({})


async def test_expiring_files_vanish_and_the_purge_removes_their_bytes(
    make_client: AppFactory, tmp_path: Path
) -> None:
    async with make_client() as client:
        brief = (await post(client, b"short-lived", "a.txt", expires_in="1s")).json()
        assert brief["expires_at"] is not None
        kept = (await client.put("/upload/b.txt", content=b"kept")).json()
        assert kept["expires_at"] is None
        assert (await client.get(f"/files/{brief['id']}")).status_code == 200
        await asyncio.sleep(1.2)
        for path in (f"/files/{brief['id']}", f"/download/{brief['id']}", f"/view/{brief['id']}"):
            assert_problem(await client.get(path), 404, "file_not_found")
        assert [i["id"] for i in (await client.get("/files")).json()["items"]] == [kept["id"]]
        assert len(blob_files(tmp_path)) == 2
        await run_job(client, MAINTENANCE_JOB)
        assert len(blob_files(tmp_path)) == 1


async def test_expiry_validation_and_limits(make_client: AppFactory) -> None:
    async with make_client(max_expires_in="1h", default_expires_in="10m") as client:
        default = (await client.put("/upload/a", content=b"a")).json()
        at = datetime.fromisoformat(default["expires_at"])
        assert timedelta(minutes=9) < at - datetime.now(UTC) <= timedelta(minutes=10)
        later = (datetime.now(UTC) + timedelta(minutes=30)).isoformat()
        assert (
            await client.put("/upload/b", params={"expires_at": later}, content=b"b")
        ).status_code == 201
        too_far = await client.put("/upload/c", params={"expires_in": "2h"}, content=b"c")
        assert_problem(too_far, 400, "invalid_expiry")
        for params in (
            {"expires_in": "soon"},
            {"expires_at": "2020-01-01T00:00:00Z"},
            {"expires_at": "2099-01-01"},
        ):
            assert_problem(
                await client.put("/upload/d", params=params, content=b"d"), 400, "invalid_expiry"
            )


async def test_trash_round_trip(make_client: AppFactory, tmp_path: Path) -> None:
    async with make_client(trash_retention="1s") as client:
        record = (await post(client, b"precious", "keep.txt")).json()
        assert (await client.delete(f"/files/{record['id']}")).status_code == 204
        assert_problem(await client.get(f"/files/{record['id']}"), 404, "file_not_found")
        assert (await client.get("/files")).json()["items"] == []
        trash = (await client.get("/files", params={"trash": "true"})).json()["items"]
        assert [(i["id"], i["deleted_at"] is not None) for i in trash] == [(record["id"], True)]
        restored = await client.post(f"/files/{record['id']}/restore")
        assert restored.status_code == 200
        assert restored.json()["deleted_at"] is None
        assert (await client.get(f"/download/{record['id']}")).content == b"precious"
        assert_problem(await client.post(f"/files/{record['id']}/restore"), 404, "file_not_found")

        assert (await client.delete(f"/files/{record['id']}")).status_code == 204
        await run_job(client, MAINTENANCE_JOB)
        assert len(blob_files(tmp_path)) == 1  # still within the retention
        await asyncio.sleep(1.2)
        await run_job(client, MAINTENANCE_JOB)
        assert blob_files(tmp_path) == []
        assert (await client.get("/files", params={"trash": "true"})).json()["items"] == []
        assert_problem(await client.post(f"/files/{record['id']}/restore"), 404, "file_not_found")


async def test_trash_belongs_to_its_owner(make_client: AppFactory) -> None:
    async with make_client(trash_retention="1h") as admin:
        key = (await admin.post("/admin/keys", json={"name": "zoe", "role": "uploader"})).json()[
            "key"
        ]
        zoe = {"authorization": f"Bearer {key}"}
        mine = (
            await admin.post(
                "/upload",
                files={"file": ("z.txt", b"z")},
                data={"visibility": "public"},
                headers=zoe,
            )
        ).json()
        other = (await post(admin, b"admin's", "o.txt", visibility="public")).json()
        await admin.delete(f"/files/{mine['id']}", headers=zoe)
        await admin.delete(f"/files/{other['id']}")
        zoe_trash = (await admin.get("/files", params={"trash": "true"}, headers=zoe)).json()[
            "items"
        ]
        assert [i["id"] for i in zoe_trash] == [mine["id"]]
        assert_problem(
            await admin.post(f"/files/{other['id']}/restore", headers=zoe), 404, "file_not_found"
        )
        all_trash = (await admin.get("/files", params={"trash": "true"})).json()["items"]
        assert {i["id"] for i in all_trash} == {mine["id"], other["id"]}


async def test_without_trash_delete_is_final(make_client: AppFactory) -> None:
    async with make_client() as client:
        record = (await post(client, b"gone")).json()
        await client.delete(f"/files/{record['id']}")
        assert_problem(await client.post(f"/files/{record['id']}/restore"), 400, "trash_disabled")
        assert_problem(await client.get("/files", params={"trash": "true"}), 400, "trash_disabled")


async def test_scrub_reports_corrupted_blobs(make_client: AppFactory, tmp_path: Path) -> None:
    async with make_client() as client:
        record = (await post(client, b"original bytes", "a.txt")).json()
        (blob,) = blob_files(tmp_path)
        blob.write_bytes(b"bit rot")
        await run_job(client, SCRUB_JOB)
        audit = (await client.get("/admin/audit", params={"action": "blob.corrupt"})).json()[
            "items"
        ]
        assert [e["target"] for e in audit] == [record["sha256"]]


async def test_expiry_field_after_the_file_part(make_client: AppFactory) -> None:
    async with make_client() as client:
        body = (
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.txt"\r\n\r\n'
            b'data\r\n--b\r\nContent-Disposition: form-data; name="expires_in"\r\n\r\n'
            b"1h\r\n--b--\r\n"
        )
        response = await client.post(
            "/upload", content=body, headers={"content-type": "multipart/form-data; boundary=b"}
        )
        assert response.status_code == 201, response.text
        assert response.json()["expires_at"] is not None


async def test_only_the_served_app_tunes_the_garbage_collector(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, bootstrap_admin_key=ADMIN_KEY)
    before = gc.get_threshold()
    try:
        for tune, expected in ((False, before[0]), (True, 20_000)):
            app = create_app(settings, tune_gc=tune)
            async with app.router.lifespan_context(app):
                assert gc.get_threshold()[0] == expected
                assert (gc.get_freeze_count() > 0) is tune
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
