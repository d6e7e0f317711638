"""Quotas under concurrency: room is reserved before the bytes are accepted, so parallel uploads
of one owner never pass the quota together (20 at once used to store 20 files on a quota of 3)."""

from __future__ import annotations

import asyncio

import httpx

from tests.integration.conftest import AppFactory

MiB = 1024 * 1024


async def _uploader(admin: httpx.AsyncClient, **quota: int) -> dict[str, str]:
    created = await admin.post("/admin/keys", json={"name": "ann", "role": "uploader", **quota})
    assert created.status_code == 201, created.text
    return {"authorization": f"Bearer {created.json()['key']}"}


async def test_twenty_parallel_uploads_store_three_files_on_a_quota_of_three(
    make_client: AppFactory,
) -> None:
    async with make_client() as admin:
        ann = await _uploader(admin, quota_files=3)
        answers = await asyncio.gather(
            *(
                admin.post(
                    "/upload", files={"file": (f"{n}.txt", f"file {n}".encode())}, headers=ann
                )
                for n in range(20)
            )
        )
        statuses = sorted(a.status_code for a in answers)
        assert statuses == [201] * 3 + [413] * 17
        assert {a.json()["code"] for a in answers if a.status_code == 413} == {"quota_exceeded"}
        listed = (await admin.get("/files", headers=ann)).json()["items"]
        assert len(listed) == 3
        # The room of the refused uploads came back at once: after a delete, one more fits.
        assert (await admin.delete(f"/files/{listed[0]['id']}", headers=ann)).status_code == 204
        again = await admin.post("/upload", files={"file": ("x.txt", b"x")}, headers=ann)
        assert again.status_code == 201


async def test_parallel_uploads_never_pass_a_byte_quota(make_client: AppFactory) -> None:
    async with make_client(max_upload_bytes=2 * MiB) as admin:
        ann = await _uploader(admin, quota_bytes=5 * MiB)

        async def put(n: int) -> httpx.Response:
            body = bytes([n]) * MiB  # distinct contents: no deduplication between them
            return await admin.put(f"/upload/{n}.bin", content=body, headers=ann)

        answers = await asyncio.gather(*(put(n) for n in range(20)))
        stored = [a for a in answers if a.status_code == 201]
        assert len(stored) == 5
        assert all(a.status_code == 413 for a in answers if a.status_code != 201)
        listed = (await admin.get("/files", headers=ann)).json()["items"]
        assert sum(item["size"] for item in listed) == 5 * MiB
