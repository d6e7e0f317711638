"""Keys, roles, per-file access, IP rules, rate limits, quotas, headers and audit, end to end."""

from __future__ import annotations

import asyncio
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from filewallball.settings import Settings
from tests.integration.conftest import ADMIN_KEY, GENEROUS, AppFactory, serve
from tests.integration.test_http_files import PNG, assert_problem, post


async def make_key(admin: httpx.AsyncClient, name: str, role: str, **extra: Any) -> str:
    response = await admin.post("/admin/keys", json={"name": name, "role": role, **extra})
    assert response.status_code == 201, response.text
    secret: str = response.json()["key"]
    return secret


def as_key(client: httpx.AsyncClient, key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"} if key else {"authorization": ""}


ENDPOINTS = [
    ("POST", "/upload"),
    ("PUT", "/upload/x.txt"),
    ("GET", "/files"),
    ("GET", "/files/AAAAAAAAAAAAAAAAAAAAAA"),
    ("GET", "/download/AAAAAAAAAAAAAAAAAAAAAA"),
    ("HEAD", "/download/AAAAAAAAAAAAAAAAAAAAAA"),
    ("GET", "/view/AAAAAAAAAAAAAAAAAAAAAA"),
    ("DELETE", "/files/AAAAAAAAAAAAAAAAAAAAAA"),
    ("GET", "/admin/keys"),
    ("POST", "/admin/keys"),
    ("DELETE", "/admin/keys/abc"),
    ("GET", "/admin/ip-rules"),
    ("POST", "/admin/ip-rules"),
    ("GET", "/admin/audit"),
    ("GET", "/docs"),
    ("GET", "/docs/assets/swagger-ui.css"),
    ("GET", "/openapi.json"),
    ("GET", "/nowhere"),
]


async def test_strangers_get_nothing_but_401s(make_client: AppFactory) -> None:
    async with make_client() as admin:
        revoked = await make_key(admin, "gone", "uploader")
        key_id = revoked.split("_")[1]
        assert (await admin.delete(f"/admin/keys/{key_id}")).status_code == 204
        wrong_secret = ADMIN_KEY[:-5] + "BBBBB"
        for key in (None, "garbage", "fwb_x_y", wrong_secret, revoked, "Basic abc"):
            for method, path in ENDPOINTS:
                response = await admin.request(method, path, headers=as_key(admin, key))
                assert response.status_code == 401, (key, method, path, response.text)
                assert response.headers["www-authenticate"].startswith("Bearer")
                if method != "HEAD":
                    assert response.json()["code"] == "unauthenticated"
        open_paths = [
            await admin.get(p, headers=as_key(admin, None)) for p in ("/healthz", "/readyz")
        ]
        assert [r.status_code for r in open_paths] == [200, 200]


async def test_expired_key_is_refused(make_client: AppFactory) -> None:
    async with make_client() as admin:
        soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
        key = await make_key(admin, "brief", "reader", expires_at=soon)
        assert (await admin.get("/files", headers=as_key(admin, key))).status_code == 200
        await asyncio.sleep(1.2)
        assert_problem(
            await admin.get("/files", headers=as_key(admin, key)), 401, "unauthenticated"
        )
        past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
        response = await admin.post(
            "/admin/keys", json={"name": "x", "role": "reader", "expires_at": past}
        )
        assert_problem(response, 400, "invalid_expiry")


async def test_key_secrets_are_shown_once_and_never_listed(make_client: AppFactory) -> None:
    async with make_client() as admin:
        created = await admin.post(
            "/admin/keys", json={"name": "ci", "role": "uploader", "allowed_cidrs": ["127.0.0.0/8"]}
        )
        body = created.json()
        assert body["key"].startswith("fwb_")
        assert len(body["key"]) >= 4 + 12 + 1 + 43  # >= 256 bits of secret
        assert body["owner"] == "ci"
        listed = (await admin.get("/admin/keys")).json()
        assert {k["name"] for k in listed["items"]} == {"bootstrap-admin", "ci"}
        text = (await admin.get("/admin/keys")).text
        assert body["key"] not in text
        assert all("key" not in k and "secret_hash" not in k for k in listed["items"])
        assert_problem(
            await admin.post("/admin/keys", json={"name": "x", "role": "root"}),
            400,
            "invalid_request",
        )


async def test_role_matrix(make_client: AppFactory) -> None:
    async with make_client() as admin:
        alice = await make_key(admin, "alice", "uploader")
        alice_reader = await make_key(admin, "alice-reader", "reader", owner="alice")
        bob = await make_key(admin, "bob", "uploader")
        reader = await make_key(admin, "carol", "reader")

        def h(key: str) -> dict[str, str]:
            return as_key(admin, key)

        own = (
            await admin.post("/upload", files={"file": ("a.txt", b"alice")}, headers=h(alice))
        ).json()
        public = (
            await admin.post(
                "/upload",
                files={"file": ("p.txt", b"pub")},
                data={"visibility": "public"},
                headers=h(alice),
            )
        ).json()
        assert own["owner"] == "alice"
        assert (await admin.put("/upload/b.txt", content=b"bob", headers=h(bob))).status_code == 201
        for key in (reader, alice_reader):
            assert_problem(
                await admin.post("/upload", files={"file": ("x", b"x")}, headers=h(key)),
                403,
                "access_denied",
            )
            assert_problem(
                await admin.put("/upload/x", content=b"x", headers=h(key)), 403, "access_denied"
            )

        for path in ("/files/{id}", "/download/{id}", "/view/{id}"):
            private_url, public_url = path.format(id=own["id"]), path.format(id=public["id"])
            for key in (alice, alice_reader, ADMIN_KEY):  # the owner's keys and the admin
                assert (await admin.get(private_url, headers=h(key))).status_code == 200
            for key in (bob, reader):  # another owner's private file does not exist for them
                assert_problem(await admin.get(private_url, headers=h(key)), 404, "file_not_found")
            for key in (alice, alice_reader, bob, reader, ADMIN_KEY):
                assert (await admin.get(public_url, headers=h(key))).status_code == 200
        assert (await admin.head(f"/download/{own['id']}", headers=h(bob))).status_code == 404

        def names(response: httpx.Response) -> set[str]:
            return {item["filename"] for item in response.json()["items"]}

        assert names(await admin.get("/files", headers=h(alice))) == {"a.txt", "p.txt"}
        assert names(await admin.get("/files", headers=h(alice_reader))) == {"a.txt", "p.txt"}
        assert names(await admin.get("/files", headers=h(bob))) == {"b.txt", "p.txt"}
        assert names(await admin.get("/files", headers=h(reader))) == {"p.txt"}
        assert names(await admin.get("/files")) == {"a.txt", "p.txt", "b.txt"}

        for key in (alice, bob, reader, alice_reader):
            for method, path in (
                ("GET", "/admin/keys"),
                ("GET", "/admin/audit"),
                ("GET", "/admin/ip-rules"),
            ):
                assert_problem(
                    await admin.request(method, path, headers=h(key)), 403, "access_denied"
                )
            response = await admin.post(
                "/admin/keys", json={"name": "x", "role": "admin"}, headers=h(key)
            )
            assert_problem(response, 403, "access_denied")

        assert_problem(
            await admin.delete(f"/files/{own['id']}", headers=h(bob)), 404, "file_not_found"
        )
        assert_problem(
            await admin.delete(f"/files/{public['id']}", headers=h(bob)), 403, "access_denied"
        )
        assert_problem(
            await admin.delete(f"/files/{own['id']}", headers=h(alice_reader)), 403, "access_denied"
        )
        assert (await admin.delete(f"/files/{own['id']}", headers=h(alice))).status_code == 204
        assert (await admin.delete(f"/files/{public['id']}")).status_code == 204  # admin: any file


async def test_revocation_is_immediate_on_another_instance(make_client: AppFactory) -> None:
    """On PostgreSQL + Redis, the other instance had the key cached: it must refuse it anyway."""
    async with make_client() as first, make_client() as second:
        key = await make_key(first, "cached", "reader")
        for _ in range(2):
            assert (await second.get("/files", headers=as_key(second, key))).status_code == 200
        assert (await first.delete(f"/admin/keys/{key.split('_')[1]}")).status_code == 204
        assert_problem(
            await second.get("/files", headers=as_key(second, key)), 401, "unauthenticated"
        )


async def test_revocation_is_immediate(make_client: AppFactory) -> None:
    async with make_client() as admin:
        key = await make_key(admin, "temp", "uploader")
        assert (await admin.get("/files", headers=as_key(admin, key))).status_code == 200
        key_id = key.split("_")[1]
        assert (await admin.delete(f"/admin/keys/{key_id}")).status_code == 204
        assert_problem(
            await admin.get("/files", headers=as_key(admin, key)), 401, "unauthenticated"
        )
        listed = {k["id"]: k for k in (await admin.get("/admin/keys")).json()["items"]}
        assert listed[key_id]["revoked_at"] is not None
        assert listed[key_id]["last_used_at"] is not None
        assert_problem(await admin.delete("/admin/keys/unknown"), 404, "not_found")


async def test_audit_log_records_changes_downloads_and_denials(make_client: AppFactory) -> None:
    async with make_client() as admin:
        uploader = await make_key(admin, "dana", "uploader")
        record = (await post(admin, b"audited", "a.txt")).json()
        await admin.get(f"/download/{record['id']}", headers={"x-request-id": "dl-1"})
        await admin.get(f"/view/{record['id']}")
        await admin.get("/files", headers=as_key(admin, "fwb_nope"))
        await admin.get("/admin/keys", headers=as_key(admin, uploader))
        await admin.delete(f"/files/{record['id']}")

        entries = (await admin.get("/admin/audit", params={"limit": "100"})).json()["items"]
        actions = [(e["action"], e["outcome"]) for e in entries]
        for expected in (
            ("key.bootstrap", "success"),
            ("key.create", "success"),
            ("file.upload", "success"),
            ("file.download", "success"),
            ("file.view", "success"),
            ("file.delete", "success"),
            ("request.denied", "denied"),
        ):
            assert expected in actions, (expected, actions)
        download = next(e for e in entries if e["action"] == "file.download")
        assert download["request_id"] == "dl-1"
        assert download["actor"] == "bootstrap-admin"
        assert download["target"] == record["id"]
        assert download["client_ip"] == "127.0.0.1"
        denials = [e for e in entries if e["action"] == "request.denied"]
        assert {d["detail"] for d in denials} == {"unauthenticated", "access_denied"}
        ids = [e["id"] for e in entries]
        assert ids == sorted(ids, reverse=True)

        only = (await admin.get("/admin/audit", params={"action": "file.upload"})).json()["items"]
        assert {e["action"] for e in only} == {"file.upload"}
        page = (await admin.get("/admin/audit", params={"limit": "2"})).json()
        assert len(page["items"]) == 2
        rest = (
            await admin.get("/admin/audit", params={"limit": "100", "cursor": page["next_cursor"]})
        ).json()
        assert [e["id"] for e in page["items"] + rest["items"]] == ids
        since = (await admin.get("/admin/audit", params={"since": "2999-01-01T00:00:00Z"})).json()
        assert since["items"] == []


async def test_ip_rules_from_the_api_and_ipv6(make_client: AppFactory) -> None:
    fast = {"ip_rules_refresh_seconds": 1}  # each replica re-reads the rules every second
    async with (
        make_client(**fast) as admin,
        make_client(client_ip="10.1.2.3", **fast) as far,
        make_client(client_ip="2001:db8::7", **fast) as v6,
    ):
        assert (await far.get("/files")).status_code == 200
        rule = (
            await admin.post("/admin/ip-rules", json={"cidr": "10.0.0.0/8", "action": "deny"})
        ).json()
        assert rule["cidr"] == "10.0.0.0/8"
        await admin.post(
            "/admin/ip-rules", json={"cidr": "2001:db8::/32", "action": "deny", "note": "lab"}
        )
        # `far` is another app instance (another replica): it sees the rule within the refresh.
        await asyncio.sleep(1.2)
        assert_problem(await far.get("/files"), 403, "access_denied")
        assert_problem(await v6.get("/files"), 403, "access_denied")
        assert (await admin.get("/files")).status_code == 200
        listed = (await admin.get("/admin/ip-rules")).json()["items"]
        assert {r["cidr"] for r in listed} == {"10.0.0.0/8", "2001:db8::/32"}
        assert (await admin.delete(f"/admin/ip-rules/{rule['id']}")).status_code == 204
        await asyncio.sleep(1.2)
        assert (await far.get("/files")).status_code == 200
        assert_problem(
            await admin.post("/admin/ip-rules", json={"cidr": "nonsense", "action": "deny"}),
            400,
            "invalid_cidr",
        )


async def test_ip_allow_list_from_settings(make_client: AppFactory) -> None:
    async with make_client(ip_allow=["127.0.0.1/32"], client_ip="192.0.2.1") as outside:
        assert_problem(await outside.get("/files"), 403, "access_denied")
        assert (await outside.get("/healthz")).status_code == 200  # probes stay open


async def test_key_allowed_cidrs(make_client: AppFactory) -> None:
    async with make_client() as admin, make_client(client_ip="192.0.2.7") as inside:
        key = await make_key(admin, "ci", "uploader", allowed_cidrs=["192.0.2.0/24"])
        assert_problem(await admin.get("/files", headers=as_key(admin, key)), 403, "access_denied")
        assert (await inside.get("/files", headers=as_key(inside, key))).status_code == 200


async def test_trusted_proxy_and_spoofed_forwarded_for(make_client: AppFactory) -> None:
    settings = {"trusted_proxies": ["127.0.0.1/32"], "ip_deny": ["203.0.113.0/24"]}
    async with (
        make_client(**settings) as via_proxy,
        make_client(client_ip="198.51.100.4", **settings) as direct,
    ):
        # Through the trusted proxy, the right-most untrusted hop is the client.
        blocked = await via_proxy.get("/files", headers={"x-forwarded-for": "1.1.1.1, 203.0.113.9"})
        assert_problem(blocked, 403, "access_denied")
        allowed = await via_proxy.get("/files", headers={"x-forwarded-for": "203.0.113.9, 1.1.1.1"})
        assert allowed.status_code == 200
        # Only trusted hops (Prometheus in the proxies' own network, through the pod's nginx):
        # the furthest of them is the client, not the proxy next to us.
        chain = {
            "trusted_proxies": ["127.0.0.1/32", "203.0.113.0/24"],
            "ip_deny": ["203.0.113.9/32"],
        }
        async with make_client(**chain) as chained:
            far = await chained.get("/files", headers={"x-forwarded-for": "203.0.113.9"})
            assert_problem(far, 403, "access_denied")
            near = await chained.get("/files", headers={"x-forwarded-for": "203.0.113.10"})
            assert near.status_code == 200
        # From an untrusted peer the header changes nothing, either way.
        assert (
            await direct.get("/files", headers={"x-forwarded-for": "203.0.113.9"})
        ).status_code == 200
        entries = (await via_proxy.get("/admin/audit", params={"action": "request.denied"})).json()[
            "items"
        ]
        assert entries[0]["client_ip"] == "203.0.113.9"


async def test_rate_limit_429_and_reset(make_client: AppFactory) -> None:
    async with make_client(rate_limit="3/second", upload_rate_limit="2/second") as client:
        statuses = [(await client.get("/files")).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        limited = await client.get("/files")
        assert_problem(limited, 429, "rate_limited")
        assert 1 <= int(limited.headers["retry-after"]) <= 1
        assert limited.headers["ratelimit-policy"] == '"default";q=3;w=1'
        assert limited.headers["ratelimit"].startswith('"default";r=0;t=')
        # Uploads have a budget of their own.
        assert (await post(client, b"1")).status_code == 201
        assert (await post(client, b"2")).status_code == 201
        assert_problem(await post(client, b"3"), 429, "rate_limited")
        await asyncio.sleep(1.1)
        ok = await client.get("/files")
        assert ok.status_code == 200
        assert ok.headers["ratelimit"].startswith('"default";r=2;')
        entries = (await client.get("/admin/audit", params={"action": "request.denied"})).json()[
            "items"
        ]
        assert any(e["detail"] == "rate_limited" for e in entries)


async def test_quota_boundaries(make_client: AppFactory) -> None:
    async with make_client() as admin:
        key = await make_key(admin, "small", "uploader", quota_bytes=100, quota_files=3)
        h = as_key(admin, key)
        assert (await admin.put("/upload/a", content=b"x" * 60, headers=h)).status_code == 201
        assert_problem(
            await admin.put("/upload/b", content=b"x" * 41, headers=h), 413, "quota_exceeded"
        )
        assert (
            await admin.put("/upload/b", content=b"x" * 40, headers=h)
        ).status_code == 201  # exactly 100
        assert_problem(
            await admin.post("/upload", files={"file": ("c", b"x")}, headers=h),
            413,
            "quota_exceeded",
        )
        # Identical content still counts per logical file.
        same = await make_key(admin, "dedup", "uploader", quota_bytes=150)
        assert (
            await admin.put("/upload/1", content=b"y" * 100, headers=as_key(admin, same))
        ).status_code == 201
        again = await admin.put("/upload/2", content=b"y" * 100, headers=as_key(admin, same))
        assert_problem(again, 413, "quota_exceeded")
        few = await make_key(admin, "few", "uploader", quota_files=1)
        assert (
            await admin.put("/upload/1", content=b"z", headers=as_key(admin, few))
        ).status_code == 201
        assert_problem(
            await admin.put("/upload/2", content=b"z", headers=as_key(admin, few)),
            413,
            "quota_exceeded",
        )


async def test_security_headers_on_every_response(make_client: AppFactory) -> None:
    async with make_client() as client:
        record = (await post(client, PNG, "x.png")).json()
        responses = [
            await client.get("/files"),
            await client.get("/files/unknown"),
            await client.get("/files", headers={"authorization": ""}),
            await client.get("/healthz"),
            await client.get(f"/download/{record['id']}"),
        ]
        for response in responses:
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["referrer-policy"] == "no-referrer"
            assert response.headers["cross-origin-resource-policy"] == "same-origin"
            assert "strict-transport-security" not in response.headers
        assert (
            responses[0].headers["content-security-policy"]
            == "default-src 'none'; frame-ancestors 'none'"
        )
        assert responses[-1].headers["content-security-policy"] == "sandbox"
        assert "access-control-allow-origin" not in responses[0].headers  # no CORS by default
    async with make_client(
        hsts=True, cors_origins=["https://app.example"], public_docs=True
    ) as client:
        response = await client.get("/files", headers={"origin": "https://app.example"})
        assert response.headers["strict-transport-security"].startswith("max-age=")
        assert response.headers["access-control-allow-origin"] == "https://app.example"
        preflight = await client.options(
            "/upload",
            headers={
                "origin": "https://app.example",
                "access-control-request-method": "POST",
                "authorization": "",
            },
        )
        assert preflight.status_code == 200
        docs = await client.get("/docs", headers={"authorization": ""})
        assert docs.status_code == 200
        assert "script-src 'self' 'nonce-" in docs.headers["content-security-policy"]


async def test_bootstrap_writes_a_private_admin_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(data_dir=tmp_path, **GENEROUS)  # no preset key
    async with serve(settings, key=None) as client:
        key_file = tmp_path / "admin.key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        key = key_file.read_text().strip()
        assert (
            await client.get("/admin/keys", headers={"authorization": f"Bearer {key}"})
        ).status_code == 200
    assert key not in capsys.readouterr().out  # the logs say where it is, never what it is
    async with serve(settings, key=None):
        assert key_file.read_text().strip() == key  # not replaced once keys exist


async def test_two_instances_share_one_rate_budget_on_redis(
    tmp_path: Path, pg_url: str, redis_prefix: str
) -> None:
    """Two replicas on one Redis: the limit is one budget, not one per process."""
    from tests.conftest import REDIS_URL

    common: dict[str, Any] = {
        "data_dir": tmp_path,
        "database_url": pg_url,
        "redis_url": REDIS_URL,
        "redis_prefix": redis_prefix,
        "auto_migrate": True,
        "bootstrap_admin_key": ADMIN_KEY,
        "rate_limit": "5/minute",
    }
    async with serve(Settings(**common)) as first, serve(Settings(**common)) as second:
        statuses = [(await client.get("/files")).status_code for client in (first, second) * 4]
    assert statuses.count(200) == 5
    assert statuses[5:] == [429, 429, 429]
