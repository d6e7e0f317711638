"""GET /metrics: access rules, and business metrics that move with each operation."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import AppFactory
from tests.integration.test_http_files import PNG, assert_problem, post


async def scrape(
    client: httpx.AsyncClient, **kwargs: object
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = await client.get("/metrics", **kwargs)  # type: ignore[arg-type]
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_need_a_key_with_the_permission_or_an_allowed_address(
    make_client: AppFactory,
) -> None:
    async with make_client() as admin:
        assert_problem(
            await admin.get("/metrics", headers={"authorization": ""}), 401, "unauthenticated"
        )
        key = (await admin.post("/admin/keys", json={"name": "u", "role": "uploader"})).json()[
            "key"
        ]
        assert_problem(
            await admin.get("/metrics", headers={"authorization": f"Bearer {key}"}),
            403,
            "access_denied",
        )
        await scrape(admin)
    async with make_client(metrics_allowed_cidrs=["127.0.0.0/8"], key=None) as scraper:
        await scrape(scraper)
        assert_problem(await scraper.get("/files"), 401, "unauthenticated")  # only /metrics is open


async def test_business_metrics_move(make_client: AppFactory) -> None:
    async with make_client(max_upload_bytes=10_000) as client:
        before = await scrape(client)
        text = (await post(client, b"hello metrics", "m.txt")).json()
        await post(client, PNG, "m.png")
        assert_problem(await post(client, b"x" * 10_001), 413, "file_too_large")
        await client.get(f"/download/{text['id']}")
        await client.get(f"/files/{text['id']}")
        await client.get(f"/files/{text['id']}")
        await client.get("/files", headers={"authorization": "Bearer fwb_nope"})
        await client.get("/readyz")
        after = await scrape(client)
        cached = (await client.get("/stats/cache")).json()["backend"] == "redis"

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("filewallball_uploads_total", outcome="success", reason="none") == 2
    assert moved("filewallball_uploads_total", outcome="failed", reason="file_too_large") == 1
    assert moved("filewallball_uploaded_bytes_total") == len(b"hello metrics") + len(PNG)
    assert moved("filewallball_downloads_total") == 1
    assert moved("filewallball_downloaded_bytes_total") == len(b"hello metrics")
    assert moved("filewallball_denied_requests_total", reason="unauthenticated") == 1
    # The embedded default caches nothing (every read is the database's).
    hits = moved("filewallball_cache_requests_total", cache="records", result="hit")
    assert hits >= 2 if cached else hits == 0
    assert value(after, "filewallball_stored_files") == 2
    assert value(after, "filewallball_stored_bytes", kind="logical") == len(b"hello metrics") + len(
        PNG
    )
    assert value(after, "filewallball_blob_volume_free_bytes") > 0
    assert value(after, "filewallball_dependency_up", dependency="database") == 1
    assert moved("filewallball_job_runs_total", task="thumbnail", outcome="success") >= 0
    routes = {
        dict(labels).get("handler") for name, labels in after if name == "http_requests_total"
    }
    assert "/files/{file_id}" in routes
    assert not any(r and text["id"] in r for r in routes)  # route templates, never raw paths


async def test_labels_an_outsider_chooses_are_bounded(make_client: AppFactory) -> None:
    async with make_client() as client:
        before = await scrape(client)
        # Without a key: refused before routing, yet counted.
        await client.request("WEIRD1", "/files", headers={"authorization": ""})
        await client.request("WEIRD2", "/files")
        await client.get("/no/such/route/a1b2c3")
        after = await scrape(client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    methods = {dict(labels).get("method") for name, labels in after if name.startswith("http_")}
    assert not any(m and m.startswith("WEIRD") for m in methods)
    assert moved("http_requests_total", handler="/files", method="other", status="4xx") == 2
    assert moved("http_requests_total", handler="unmatched", method="GET", status="4xx") == 1
    handlers = {dict(labels).get("handler") for name, labels in after if name.startswith("http_")}
    assert not any(h and "a1b2c3" in h for h in handlers)


async def test_dependencies_are_checked_without_readyz(make_client: AppFactory) -> None:
    async with make_client() as client:
        samples = await scrape(client)  # the first request: nothing called /readyz
        redis = (await client.get("/stats/cache")).json()["backend"] == "redis"
    assert value(samples, "filewallball_dependency_up", dependency="database") == 1
    assert value(samples, "filewallball_dependency_up", dependency="blob_storage") == 1
    if redis:
        assert value(samples, "filewallball_dependency_up", dependency="redis") == 1


async def test_resumable_upload_metrics_move(make_client: AppFactory) -> None:
    tus = {"Tus-Resumable": "1.0.0"}
    patch = {**tus, "Content-Type": "application/offset+octet-stream"}
    async with make_client() as client:
        before = await scrape(client)
        done = (await client.post("/tus", headers={**tus, "Upload-Length": "10"})).headers
        url = done["location"]
        await client.patch(url, content=b"01234", headers={**patch, "Upload-Offset": "0"})
        await client.patch(url, content=b"56789", headers={**patch, "Upload-Offset": "5"})
        other = (await client.post("/tus", headers={**tus, "Upload-Length": "10"})).headers
        await client.patch(
            other["location"], content=b"abc", headers={**patch, "Upload-Offset": "0"}
        )
        await client.delete(other["location"], headers=tus)
        after = await scrape(client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("filewallball_resumable_uploads_total", event="created") == 2
    assert moved("filewallball_resumable_uploads_total", event="completed") == 1
    assert moved("filewallball_resumable_uploads_total", event="terminated") == 1
    assert moved("filewallball_resumable_received_bytes_total") == 13
    assert moved("filewallball_uploaded_bytes_total") == 10
    assert moved("filewallball_uploads_total", outcome="success", reason="none") == 1
