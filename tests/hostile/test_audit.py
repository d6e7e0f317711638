"""The audit trail under hostile input: what a client puts in a path cannot stop it."""

from __future__ import annotations

import httpx


async def test_a_nul_in_a_refused_path_does_not_jam_the_audit_log(
    client: httpx.AsyncClient,
) -> None:
    # PostgreSQL refuses NUL in text: this entry held back its batch, and every one after it,
    # until 100,000 waited and every request failed with 503.
    refused = await client.get("/files/%00", headers={"authorization": "Bearer nope"})
    assert refused.status_code == 401
    uploaded = await client.put("/upload/after.txt", content=b"written after the NUL")
    assert uploaded.status_code == 201, uploaded.text
    audit = await client.get("/admin/audit")
    assert audit.status_code == 200, audit.text
    entries = audit.json()["items"]
    assert {"file.upload", "request.denied"} <= {e["action"] for e in entries}
    denied = next(e for e in entries if e["action"] == "request.denied")
    assert denied["target"] == "GET /files/\ufffd"
