"""Dependencies down: the database gives 503 problems, Redis down is only a slower cache."""

from __future__ import annotations

import shutil
from pathlib import Path

from filewallball.settings import Settings
from tests.integration.conftest import ADMIN_KEY, GENEROUS, serve
from tests.integration.test_http_files import assert_problem, post

CLOSED_PG = "postgresql+asyncpg://postgres@127.0.0.1:1/nowhere"
CLOSED_REDIS = "redis://127.0.0.1:1/0"


async def test_database_down_is_503_with_a_problem(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url=CLOSED_PG, bootstrap_admin_key=ADMIN_KEY)
    async with serve(settings) as client:  # the service starts without its database
        assert (await client.get("/healthz")).status_code == 200
        response = await client.get("/files/AAAAAAAAAAAAAAAAAAAAAA")
        body = assert_problem(response, 503, "dependency_unavailable")
        assert "database" in str(body["detail"])
        assert response.headers["retry-after"]
        assert_problem(await client.get("/files"), 503, "dependency_unavailable")
        upload = await post(client, b"will not be kept")
        assert_problem(upload, 503, "dependency_unavailable")
        ready = await client.get("/readyz")
        # A problem like every other: RFC 9457's numeric status, the failing check named.
        assert "database" in str(assert_problem(ready, 503, "not_ready")["detail"])
        assert ready.json()["checks"]["database"]["status"] == "failing"
        assert ready.json()["checks"]["blob_storage"]["status"] == "ok"
    stray = [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()]
    assert stray == []  # the rejected upload left no blob and no temp file


async def test_redis_down_keeps_serving_from_the_database(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, redis_url=CLOSED_REDIS, bootstrap_admin_key=ADMIN_KEY, **GENEROUS
    )
    async with serve(settings) as client:
        response = await post(client, b"still works")
        assert response.status_code == 201, response.text
        record = response.json()
        for _ in range(3):
            assert (await client.get(f"/files/{record['id']}")).status_code == 200
        assert (await client.get(f"/download/{record['id']}")).content == b"still works"
        assert (await client.delete(f"/files/{record['id']}")).status_code == 204
        assert_problem(await client.get(f"/files/{record['id']}"), 404, "file_not_found")
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["status"] == "degraded"
        assert ready.json()["checks"]["redis"]["status"] == "failing"


async def test_cache_is_shared_and_invalidated_across_instances(
    tmp_path: Path, pg_url: str, redis_prefix: str
) -> None:
    """Two app instances on one PostgreSQL and Redis: a delete on one is seen by the other."""
    from tests.conftest import REDIS_URL

    common = {
        "database_url": pg_url,
        "redis_url": REDIS_URL,
        "redis_prefix": redis_prefix,
        "auto_migrate": True,
        "bootstrap_admin_key": ADMIN_KEY,
        **GENEROUS,
    }
    first_settings = Settings(data_dir=tmp_path, **common)  # type: ignore[arg-type]
    second_settings = Settings(data_dir=tmp_path, **common)  # type: ignore[arg-type]
    async with serve(first_settings) as first, serve(second_settings) as second:
        record = (await post(first, b"shared")).json()
        assert (await second.get(f"/files/{record['id']}")).status_code == 200  # cached now
        assert (await first.delete(f"/files/{record['id']}")).status_code == 204
        assert_problem(await second.get(f"/files/{record['id']}"), 404, "file_not_found")
        assert_problem(await second.get(f"/download/{record['id']}"), 404, "file_not_found")


async def test_unsupported_request_never_500s(tmp_path: Path) -> None:
    async with serve(Settings(data_dir=tmp_path, bootstrap_admin_key=ADMIN_KEY)) as client:
        probes = [
            client.build_request(
                "POST", "/upload", content=b"x", headers={"content-type": "multipart/form-data"}
            ),
            client.build_request(
                "POST",
                "/upload",
                content=b"x",
                headers={"content-type": "multipart/form-data; boundary=" + "b" * 200},
            ),
            client.build_request(
                "PUT", "/upload/x", content=b"x", headers={"content-digest": "md5=:AAAA:"}
            ),
            client.build_request(
                "PUT", "/upload/x", content=b"x", headers={"content-digest": "sha-256=:!!:"}
            ),
            client.build_request("GET", "/files", params={"cursor": "eyJ4Ijp9"}),
            client.build_request("GET", "/files", params={"q": "\x00"}),
            client.build_request("GET", "/files/" + "x" * 5000),
            client.build_request(
                "GET",
                "/download/AAAAAAAAAAAAAAAAAAAAAA",
                headers={"range": "bytes=" + "9" * 400 + "-"},
            ),
        ]
        for request in probes:
            response = await client.send(request)
            assert response.status_code < 500, (request.url, response.text)


async def test_readiness_with_too_little_free_space(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, bootstrap_admin_key=ADMIN_KEY, min_free_bytes=2**62)
    async with serve(settings) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        check = ready.json()["checks"]["blob_storage"]
        assert check["status"] == "failing"
        assert "FWB_MIN_FREE_BYTES" in check["detail"]


async def test_readiness_with_clamd_down(tmp_path: Path) -> None:
    closed = "tcp://127.0.0.1:1"
    async with serve(
        Settings(data_dir=tmp_path, bootstrap_admin_key=ADMIN_KEY, clamd_address=closed)
    ) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["clamd"] == {
            **ready.json()["checks"]["clamd"],
            "status": "failing",
            "required": True,
        }
    fail_open = Settings(
        data_dir=tmp_path, bootstrap_admin_key=ADMIN_KEY, clamd_address=closed, scan_fail_open=True
    )
    async with serve(fail_open) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["status"] == "degraded"


async def test_readiness_and_uploads_with_unwritable_blob_storage(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, bootstrap_admin_key=ADMIN_KEY, **GENEROUS)
    async with serve(settings) as client:
        assert (await client.get("/readyz")).json()["checks"]["blob_storage"]["status"] == "ok"
        # A file where the staging folder should be: every write fails, even as root.
        staging = tmp_path / "blobs" / ".tmp"
        shutil.rmtree(staging)
        staging.write_bytes(b"")
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        check = ready.json()["checks"]["blob_storage"]
        assert check["status"] == "failing"
        assert "not writable" in check["detail"]
        assert ready.json()["checks"]["database"]["status"] == "ok"
        assert_problem(await post(client, b"nowhere to go"), 503, "dependency_unavailable")
        assert (await client.get("/files")).json()["items"] == []


async def test_readiness_names_an_unmigrated_or_older_schema(tmp_path: Path, pg_url: str) -> None:
    import asyncio

    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import create_async_engine

    from filewallball.adapters.sql import head_revision, upgrade

    settings = Settings(
        data_dir=tmp_path, database_url=pg_url, auto_migrate=False, bootstrap_admin_key=ADMIN_KEY
    )

    async def readiness() -> tuple[int, dict[str, object]]:
        async with serve(settings) as client:
            ready = await client.get("/readyz")
            return ready.status_code, ready.json()["checks"]["database"]

    async def stamp(revision: str) -> None:
        engine = create_async_engine(pg_url)
        async with engine.begin() as connection:
            await connection.execute(
                sa.text("UPDATE alembic_version SET version_num = :r"), {"r": revision}
            )
        await engine.dispose()

    status, check = await readiness()
    assert status == 503
    assert "empty database" in str(check["detail"])
    assert "filewallball migrate" in str(check["detail"])

    await asyncio.to_thread(upgrade, pg_url)
    assert (await readiness())[0] == 200
    await stamp("0001")  # older than this code needs
    status, check = await readiness()
    assert status == 503
    assert f"at revision 0001, this version needs {head_revision()}" in str(check["detail"])
    await stamp("9999_from_a_newer_release")  # a rolling upgrade migrated first: still ready
    assert (await readiness())[0] == 200
