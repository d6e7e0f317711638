"""A commit that fails after the bytes were renamed into place leaves nothing once recovery ran
(it used to leave a whole blob that no row referenced, never reclaimed)."""

from __future__ import annotations

import pytest

from filewallball.adapters.sql.file_records import SqlFileUnitOfWork
from filewallball.domain.errors import DependencyUnavailable
from filewallball.settings import Settings
from tests.integration.conftest import ADMIN_KEY, blob_files, serve


async def test_bytes_whose_record_never_committed_are_collected(
    backend: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(**backend)  # type: ignore[arg-type]

    async def fail(self: SqlFileUnitOfWork) -> None:
        raise DependencyUnavailable("database", "the database went away at the commit")

    async with serve(settings) as client:
        with monkeypatch.context() as patched:
            patched.setattr(SqlFileUnitOfWork, "commit", fail)
            refused = await client.put(
                "/upload/lost.txt", content=b"bytes renamed, never committed"
            )
        assert refused.status_code == 503
        assert refused.json()["code"] == "dependency_unavailable"
        assert (await client.get("/files")).json()["items"] == []
        assert len(blob_files(settings.data_dir)) == 1  # the rename happened before the commit
    async with serve(settings, key=ADMIN_KEY) as client:  # a restart: recovery runs at start
        assert blob_files(settings.data_dir) == []
        again = await client.put("/upload/lost.txt", content=b"bytes renamed, never committed")
        assert again.status_code == 201
        assert (await client.get(f"/download/{again.json()['id']}")).content == (
            b"bytes renamed, never committed"
        )
