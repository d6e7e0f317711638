"""The HTTP API on the in-memory fakes, swapped into the container through `override`: no I/O."""

from __future__ import annotations

from pathlib import Path

import httpx
from dependency_injector import providers

from filewallball.container import Container, register_jobs
from filewallball.entrypoints.http.app import create_app
from filewallball.settings import Settings
from tests.fakes import (
    FakeAuditLog,
    FakeBlobStore,
    FakeFileRepository,
    FakeIpRuleRepository,
    FakeKeyRepository,
    FakeTaskQueue,
    FakeUsageRepository,
)

ADMIN_KEY = "fwb_testadmin000_" + "A" * 43


async def test_upload_read_download_delete_through_fakes(tmp_path: Path) -> None:
    files, blobs, keys, audit = (
        FakeFileRepository(),
        FakeBlobStore(),
        FakeKeyRepository(),
        FakeAuditLog(),
    )
    container = Container(
        settings=Settings(data_dir=tmp_path, bootstrap_admin_key=ADMIN_KEY, auto_migrate=False)
    )
    container.files.override(providers.Object(files))
    container.blobs.override(providers.Object(blobs))
    container.keys.override(providers.Object(keys))
    container.ip_rules.override(providers.Object(FakeIpRuleRepository()))
    container.audit_store.override(providers.Object(audit))
    container.usage.override(providers.Object(FakeUsageRepository(files)))
    container.task_queue.override(providers.Object(FakeTaskQueue()))
    register_jobs(container)
    app = create_app(container=container)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://testserver",
            headers={"authorization": f"Bearer {ADMIN_KEY}"},
        ) as client:
            created = await client.post("/upload", files={"file": ("a.txt", b"hello fakes")})
            assert created.status_code == 201
            record = created.json()
            assert list(files.records) == [record["id"]]  # the fake holds the record
            assert list(blobs.blobs.values()) == [b"hello fakes"]
            assert (await client.get(f"/files/{record['id']}")).json()["sha256"] == record["sha256"]
            assert (await client.get(f"/download/{record['id']}")).content == b"hello fakes"
            listed = (await client.get("/files")).json()
            assert [item["id"] for item in listed["items"]] == [record["id"]]
            assert (await client.delete(f"/files/{record['id']}")).status_code == 204
            assert (await client.get(f"/files/{record['id']}")).status_code == 404
            refused = await client.get("/files", headers={"authorization": "Bearer fwb_nope"})
            assert refused.status_code == 401
    assert files.records == {}
    assert blobs.blobs == {}
    assert len(keys.keys) == 1  # the bootstrap admin key, made in the fake
    actions = [entry.action for entry in audit.entries]
    for action in ("file.upload", "file.download", "file.delete", "request.denied"):
        assert action in actions
    # Nothing reached a database: the SQLite file was never created.
    assert not (tmp_path / "filewallball.db").exists()
