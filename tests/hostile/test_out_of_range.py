"""Numbers and dates past every range a request may carry: a 400 problem with a stable code.

Each case answered 500 (an OverflowError, Python's limit on int() digits, a BIGINT the driver
refused) or was accepted although nothing can use it. Bounds hold where the value is parsed.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest

from tests.integration.test_http_files import assert_problem

# Past Python's limit on int() of a decimal string (4300 digits).
HUGE = "9" * 5000
BEYOND_BIGINT = 2**63
FILE = "{file}"  # replaced by the id of a file the test uploads first


def _cursor(sort: str, value: object) -> str:
    payload = json.dumps([sort, value, "A" * 22]).encode()
    return base64.urlsafe_b64encode(payload).decode().rstrip("=")


def _key(**fields: Any) -> dict[str, Any]:
    return {"json": {"name": "hostile", "role": "uploader", **fields}}


def _form(**fields: str) -> dict[str, Any]:
    return {"files": {"file": ("x.txt", b"x")}, "data": fields}


def case(label: str, method: str, url: str, code: str, **request: Any) -> Any:
    return pytest.param(method, url, request, code, id=label)


CASES = [
    # Range positions: at most 2**63 - 1, the largest size any file record holds.
    case(
        "range-first-5000-digits",
        "GET",
        f"/download/{FILE}",
        "invalid_range",
        headers={"range": f"bytes={HUGE}-"},
    ),
    case(
        "range-last-5000-digits",
        "GET",
        f"/download/{FILE}",
        "invalid_range",
        headers={"range": f"bytes=0-{HUGE}"},
    ),
    case(
        "range-suffix-5000-digits",
        "GET",
        f"/download/{FILE}",
        "invalid_range",
        headers={"range": f"bytes=-{HUGE}"},
    ),
    case(
        "range-first-past-int64",
        "GET",
        f"/download/{FILE}",
        "invalid_range",
        headers={"range": f"bytes={BEYOND_BIGINT}-"},
    ),
    case(
        "range-in-several-specs",
        "HEAD",
        f"/download/{FILE}",
        "invalid_range",
        headers={"range": f"bytes=0-1, 4-{HUGE}"},
    ),
    # expires_in: a duration of at most 100 years.
    case(
        "expires-in-days-overflow-put",
        "PUT",
        "/upload/x.txt",
        "invalid_expiry",
        params={"expires_in": "99999999999999999d"},
        content=b"x",
    ),
    case(
        "expires-in-days-overflow-post",
        "POST",
        "/upload",
        "invalid_expiry",
        **_form(expires_in="99999999999999999d"),
    ),
    case(
        "expires-in-seconds-past-year-9999",
        "PUT",
        "/upload/x.txt",
        "invalid_expiry",
        params={"expires_in": "999999999999"},
        content=b"x",
    ),
    case(
        "expires-in-weeks-30-digits",
        "POST",
        "/upload",
        "invalid_expiry",
        **_form(expires_in="9" * 30 + "w"),
    ),
    case(
        "expires-in-exponent",
        "PUT",
        "/upload/x.txt",
        "invalid_expiry",
        params={"expires_in": "1e20"},
        content=b"x",
    ),
    # expires_at: an instant before 9999-01-01 in UTC.
    case(
        "expires-at-utc-overflow-put",
        "PUT",
        "/upload/x.txt",
        "invalid_expiry",
        params={"expires_at": "9999-12-31T23:59:59-23:59"},
        content=b"x",
    ),
    case(
        "expires-at-utc-overflow-post",
        "POST",
        "/upload",
        "invalid_expiry",
        **_form(expires_at="9999-12-31T23:59:59-23:59"),
    ),
    case(
        "expires-at-end-of-time",
        "PUT",
        "/upload/x.txt",
        "invalid_expiry",
        params={"expires_at": "9999-12-31T23:59:59Z"},
        content=b"x",
    ),
    # Admin JSON: key expiry and quotas (BIGINT columns).
    case(
        "key-expires-at-end-of-time",
        "POST",
        "/admin/keys",
        "invalid_expiry",
        **_key(expires_at="9999-12-31T23:59:59Z"),
    ),
    case(
        "key-expires-at-datetime-max",
        "POST",
        "/admin/keys",
        "invalid_expiry",
        **_key(expires_at="9999-12-31T23:59:59.999999+00:00"),
    ),
    case(
        "key-expires-at-utc-overflow",
        "POST",
        "/admin/keys",
        "invalid_expiry",
        **_key(expires_at="9999-12-31T23:59:59-23:59"),
    ),
    case(
        "key-expires-at-positive-offset",
        "POST",
        "/admin/keys",
        "invalid_expiry",
        **_key(expires_at="9999-12-31T23:59:59+23:59"),
    ),
    case(
        "key-quota-bytes-1e30", "POST", "/admin/keys", "invalid_request", **_key(quota_bytes=1e30)
    ),
    case(
        "key-quota-bytes-2**63",
        "POST",
        "/admin/keys",
        "invalid_request",
        **_key(quota_bytes=BEYOND_BIGINT),
    ),
    case(
        "key-quota-files-2**63",
        "POST",
        "/admin/keys",
        "invalid_request",
        **_key(quota_files=BEYOND_BIGINT),
    ),
    case(
        "key-quota-files-2**64", "POST", "/admin/keys", "invalid_request", **_key(quota_files=2**64)
    ),
    # The audit log's query.
    case(
        "audit-since-utc-overflow",
        "GET",
        "/admin/audit",
        "invalid_datetime",
        params={"since": "9999-12-31T23:59:59-23:59"},
    ),
    case(
        "audit-until-utc-underflow",
        "GET",
        "/admin/audit",
        "invalid_datetime",
        params={"until": "0001-01-01T00:00:00+23:59"},
    ),
    case(
        "audit-cursor-past-int64",
        "GET",
        "/admin/audit",
        "invalid_request",
        params={"cursor": str(BEYOND_BIGINT)},
    ),
    # A forged list cursor.
    case(
        "cursor-date-overflow",
        "GET",
        "/files",
        "invalid_cursor",
        params={"cursor": _cursor("-created_at", "9999-12-31T23:59:59-23:59")},
    ),
    case(
        "cursor-date-underflow",
        "GET",
        "/files",
        "invalid_cursor",
        params={"sort": "created_at", "cursor": _cursor("created_at", "0001-01-01T00:00:00+23:59")},
    ),
    # Statistics windows.
    case(
        "stats-window-16-digits",
        "GET",
        "/stats/errors",
        "invalid_window",
        params={"window": "9" * 16},
    ),
    case(
        "stats-window-weeks-overflow",
        "GET",
        "/stats/usage",
        "invalid_window",
        params={"window": "999999999999999w"},
    ),
    # Content-Length: ASCII digits that fit in 64 bits.
    case(
        "content-length-5000-digits-put",
        "PUT",
        "/upload/y.txt",
        "invalid_content_length",
        content=b"x",
        headers={"content-length": HUGE},
    ),
    case(
        "content-length-5000-digits-post",
        "POST",
        "/upload",
        "invalid_content_length",
        content=b"--b--\r\n",
        headers={"content-length": HUGE, "content-type": "multipart/form-data; boundary=b"},
    ),
    case(
        "content-length-superscript",
        "PUT",
        "/upload/y.txt",
        "invalid_content_length",
        content=b"x",
        headers={"content-length": "\u00b2".encode("latin-1")},
    ),
]


@pytest.mark.parametrize(("method", "url", "request_args", "code"), CASES)
async def test_out_of_range_input_is_a_400(
    client: httpx.AsyncClient, method: str, url: str, request_args: dict[str, Any], code: str
) -> None:
    if FILE in url:
        uploaded = await client.put("/upload/a.txt", content=b"some bytes to range over\n")
        assert uploaded.status_code == 201, uploaded.text
        url = url.replace(FILE, uploaded.json()["id"])
    response = await client.request(method, url, **request_args)
    if method == "HEAD":
        assert response.status_code == 400, response.headers
    else:
        assert_problem(response, 400, code)
