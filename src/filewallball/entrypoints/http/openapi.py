"""The OpenAPI description, as generated clients need it (DESIGN.md §3).

FastAPI describes what the routes declare; this completes it once, when /openapi.json is first
asked for: the bearer scheme; every error an operation can answer (its own, the gate's 401,
403 and 429, and 503) as one Problem schema under `application/problem+json`, never FastAPI's
unused 422 "Validation Error"; the response headers clients read; readable operationIds (the
endpoint's name); an example for every operation. HEAD, answered wherever GET is, is said
once in the description rather than as a copy of every GET.
"""

from __future__ import annotations

import warnings
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

from filewallball.entrypoints.http.errors import PROBLEM_JSON, status_title
from filewallball.entrypoints.http.routes.paths import OPEN_PATHS, TUS_PATH
from filewallball.entrypoints.http.schemas import Problem

BEARER_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "description": "An API key, `fwb_<id>_<secret>` (`filewallball keys create`)",
}
DESCRIPTION = """\
Upload files and get URLs back; read their records, download them (ranges, ETags), preview
text, get thumbnails, list and delete them.

Every operation but the probes takes an API key: `Authorization: Bearer <key>`. Every error
is an RFC 9457 problem (`application/problem+json`) whose `code` is stable and whose
`request_id` finds its log lines. `HEAD` is answered wherever `GET` is, with the same headers.
"""
TAGS = [
    {"name": "files", "description": "Upload, read, list and delete file records"},
    {"name": "content", "description": "A file's bytes, text preview and thumbnails"},
    {"name": "admin", "description": "API keys, IP rules and the audit log (admin keys)"},
    {"name": "stats", "description": "Errors, usage, storage and cache statistics (admin keys)"},
    {"name": "health", "description": "Kubernetes probes, without a key"},
]

_HTTP_METHODS = ("get", "put", "post", "delete", "patch", "options", "head")
_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_CODES = {
    400: "invalid_request",
    401: "unauthenticated",
    403: "access_denied",
    404: "file_not_found",
    408: "request_timeout",
    409: "conflict",
    410: "upload_expired",
    412: "precondition_failed",
    413: "file_too_large",
    415: "type_not_allowed",
    416: "range_not_satisfiable",
    422: "malware_detected",
    423: "upload_locked",
    429: "rate_limited",
    460: "checksum_mismatch",
    503: "dependency_unavailable",
    507: "storage_full",
}
_MEANINGS = {
    400: "Malformed request or a parameter out of range (`errors` lists which)",
    401: "No key, or an unknown, revoked or expired one",
    403: "The key's role or the client's address is not allowed",
    404: "No such file, or one the caller may not see",
    408: "The body came too slowly or stopped; nothing was stored",
    409: "Conflicts with the current state (for tus: Upload-Offset is not where the upload is)",
    410: "The resumable upload passed its deadline unfinished",
    412: "A precondition (If-Match, If-Unmodified-Since) is false; nothing changed",
    413: "Past the size limit or the owner's quota",
    415: "The type is not allowed, or has no preview or thumbnail",
    416: "No requested range lies inside the file",
    422: "Malware found, or an image that cannot be rendered; nothing was stored",
    423: "Another request is writing to this resumable upload now; retry",
    429: "Rate limited (retry after `Retry-After` seconds), or too many unfinished uploads",
    460: "The bytes do not match Upload-Checksum; none were kept (tus checksum extension)",
    503: "A required dependency (database, clamd) is unavailable; retry",
    507: "The blob storage is full",
}


def _header(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "schema": schema or {"type": "string"}}


_REQUEST_ID = _header("The request's id (the client's X-Request-ID, or a new one)")
_RATE_HEADERS = {
    "RateLimit-Policy": _header('The key\'s limit, e.g. `"default";q=600;w=60`'),
    "RateLimit": _header('What is left of it, e.g. `"default";r=599;t=60`'),
}
_RETRY_AFTER = {"Retry-After": _header("Seconds to wait", {"type": "integer"})}
_SUCCESS_HEADERS: dict[tuple[str, str], dict[str, dict[str, Any]]] = {
    ("upload", "201"): {"Location": _header("The new record's URL")},
    ("upload_raw", "201"): {"Location": _header("The new record's URL")},
    ("get_file", "200"): {"ETag": _header("The record's tag: If-Match for delete and restore")},
    ("download", "200"): {
        "ETag": _header('The content\'s SHA-256, `"<hex>"`'),
        "Last-Modified": _header("The upload time"),
        "Content-Digest": _header("RFC 9530 `sha-256=:<base64>:`"),
        "Repr-Digest": _header("RFC 9530 `sha-256=:<base64>:`"),
        "Content-Disposition": _header("`attachment`, with the name as RFC 6266 `filename*`"),
        "Accept-Ranges": _header("`bytes`"),
    },
    ("download", "206"): {
        "Content-Range": _header("`bytes <first>-<last>/<size>` (one range)"),
        "ETag": _header('The content\'s SHA-256, `"<hex>"`'),
        "Repr-Digest": _header("RFC 9530 digest of the whole file"),
    },
    ("preview", "200"): {
        "ETag": _header('The content\'s SHA-256, `"<hex>"`'),
        "X-Preview-Charset": _header("The file's charset, decoded to UTF-8"),
        "X-Preview-Truncated": _header("`true` when the preview was cut"),
    },
    ("get_thumbnail", "200"): {"ETag": _header("The rendition's tag")},
}
_MEDIA_EXAMPLES: dict[tuple[str, str], Any] = {
    ("preview", "200"): "line one\nline two\n",
}
_FILE = {
    "id": "q1Xk3mR0c2Lw8zT5yV7a9b",
    "filename": "photo.jpg",
    "size": 48213,
    "content_type": "image/jpeg",
    "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "created_at": "2026-11-26T08:15:02.123456Z",
    "visibility": "public",
    "owner": "alice",
    "scan_status": "clean",
    "thumbnail_status": "done",
    "expires_at": None,
    "deleted_at": None,
    "etag": '"r3b0c44298fc1c149afbf4c8996fb9242"',
    "urls": {
        "self": "https://files.example.com/files/q1Xk3mR0c2Lw8zT5yV7a9b",
        "download": "https://files.example.com/download/q1Xk3mR0c2Lw8zT5yV7a9b",
        "view": None,
        "thumbnail": "https://files.example.com/thumbnails/q1Xk3mR0c2Lw8zT5yV7a9b",
    },
}
_KEY = {
    "id": "k7Qm2x9Lp0Az",
    "name": "ci",
    "role": "uploader",
    "owner": "ci",
    "created_at": "2026-11-01T09:00:00Z",
    "expires_at": "2027-01-01T00:00:00Z",
    "revoked_at": None,
    "last_used_at": "2026-11-26T08:15:02Z",
    "allowed_cidrs": ["10.0.0.0/8"],
    "quota_bytes": None,
    "quota_files": None,
}
_RULE = {
    "id": "r0b1c2d3e4f5",
    "cidr": "203.0.113.0/24",
    "action": "deny",
    "note": "abuse",
    "created_at": "2026-11-20T12:00:00Z",
}
_AUDIT = {
    "id": 4711,
    "at": "2026-11-26T08:15:02Z",
    "action": "file.download",
    "outcome": "success",
    "actor": "alice",
    "key_id": "k7Qm2x9Lp0Az",
    "client_ip": "198.51.100.7",
    "request_id": "5e1f32be5cb247d582385b596eabb7f3",
    "target": "q1Xk3mR0c2Lw8zT5yV7a9b",
    "detail": None,
}
_CHECK = {"status": "ok", "required": True, "latency_ms": 1.2, "detail": None}
# Examples by schema name; lists of these (`items`) get theirs from the item's.
_SCHEMA_EXAMPLES: dict[str, Any] = {
    "FileOut": _FILE,
    "FileList": {"items": [_FILE], "next_cursor": "eyJjIjoiMjAyNi0xMS0yNlQwODoxNTowMiJ9"},
    "KeyOut": _KEY,
    "CreatedKey": _KEY | {"key": "fwb_k7Qm2x9Lp0Az_" + "x" * 43},
    "KeyList": {"items": [_KEY], "next_cursor": None},
    "KeyIn": {
        "name": "ci",
        "role": "uploader",
        "expires_at": "2027-01-01T00:00:00Z",
        "allowed_cidrs": ["10.0.0.0/8"],
    },
    "RuleIn": {"cidr": "203.0.113.0/24", "action": "deny", "note": "abuse"},
    "RuleOut": _RULE,
    "RuleList": {"items": [_RULE], "next_cursor": None},
    "AuditList": {"items": [_AUDIT], "next_cursor": None},
    "ErrorStats": {
        "window": "1h",
        "uploads": 120,
        "succeeded": 117,
        "failed": 3,
        "success_rate": 0.975,
        "errors_by_reason": {"file_too_large": 2, "type_not_allowed": 1},
    },
    "UsageStats": {
        "window": "24h",
        "by": "key",
        "items": [
            {
                "client": "k7Qm2x9Lp0Az",
                "actor": "ci",
                "uploads": 40,
                "bytes_in": 52428800,
                "downloads": 300,
                "bytes_out": 734003200,
                "errors": 1,
            }
        ],
    },
    "StorageStats": {
        "files": 1200,
        "logical_bytes": 9663676416,
        "blobs": 1000,
        "stored_bytes": 8589934592,
        "dedup_ratio": 1.125,
    },
    "CacheStatsOut": {
        "cache": "records",
        "backend": "redis",
        "shared": True,
        "hits": 9500,
        "misses": 500,
        "ratio": 0.95,
        "entries": 800,
        "since": "2026-11-26T00:00:00Z",
    },
    "Health": {"status": "ok"},
    "Readiness": {
        "status": "ok",
        "checks": {"database": _CHECK, "blob_storage": _CHECK | {"latency_ms": 0.4}},
    },
}


_REQUEST_HEADERS = {
    "If-Match": "Only if the ETag is one of these (`*`: any); else 412",
    "If-None-Match": "Not if the ETag is one of these: 304 for GET and HEAD",
    "If-Modified-Since": "Only if changed since this HTTP date: else 304",
    "If-Unmodified-Since": "Only if unchanged since this HTTP date (the upload time); else 412",
    "If-Range": "Send the Range only if the ETag or date still matches; else the whole file",
    "Range": "`bytes=0-1023`, `bytes=-100`, several ranges: multipart/byteranges",
    "Content-Digest": "RFC 9530 `sha-256=:<base64>:`: the upload is refused if the bytes differ",
    "Tus-Resumable": "The tus protocol version: `1.0.0` (required)",
    "Upload-Length": "The upload's whole size in bytes",
    "Upload-Defer-Length": "`1`: the length is declared by a later PATCH",
    "Upload-Metadata": (
        "`key base64(value)` pairs, comma-separated: `filename`, `visibility`"
        " (private or public), `expires_in` (3600, 90s, 15m, 12h, 7d)"
    ),
    "Upload-Offset": "Where these bytes go: the upload's current offset",
    "Upload-Checksum": "`sha256|sha1|md5 base64(digest)` of this request's body",
    "Upload-Concat": (
        "`partial`: a part of a later concatenation; `final;<url> <url>`: the file those"
        " complete parts make, in this order"
    ),
}


def request_headers(*names: str) -> dict[str, Any]:
    """The request headers an operation reads, as parameters (for a route's `openapi_extra`)."""
    return {
        "parameters": [
            {
                "name": name,
                "in": "header",
                "required": False,
                "description": _REQUEST_HEADERS[name],
                "schema": {"type": "string"},
            }
            for name in names
        ]
    }


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """An operation's own error answers, for a route's `responses` (described as Problems)."""
    return {status: {"model": Problem} for status in statuses}


def operation_id(route: APIRoute) -> str:
    """The endpoint's name (`get_file`, `list_keys`): what a generated client calls it."""
    return route.name


def describe_api(app: FastAPI) -> None:
    """Complete the app's OpenAPI description, built once at the first /openapi.json."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            with warnings.catch_warnings():
                # A GET and its HEAD share an id until the HEAD copy is dropped below.
                warnings.filterwarnings("ignore", message="Duplicate Operation ID")
                description = generate()
            _complete(description)
        return app.openapi_schema or generate()

    app.openapi = openapi  # type: ignore[method-assign]


def _complete(description: dict[str, Any]) -> None:
    components = description.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    components["securitySchemes"] = {"bearerAuth": BEARER_SCHEME}
    description["security"] = [{"bearerAuth": []}]
    description["info"]["description"] = DESCRIPTION
    description["tags"] = TAGS
    _add_schema_examples(schemas)
    for path, item in description.get("paths", {}).items():
        _drop_implicit_head(item)
        for method in _HTTP_METHODS:
            if method in item:
                _complete_operation(path, method, item[method], schemas)


def _add_schema_examples(schemas: dict[str, Any]) -> None:
    for name, example in _SCHEMA_EXAMPLES.items():
        if name in schemas:
            schemas[name]["examples"] = [example]


def _drop_implicit_head(item: dict[str, Any]) -> None:
    """The HEAD every GET route also answers (routes.Router): the same operation, once."""
    head, get = item.get("head"), item.get("get")
    if head is not None and get is not None and head["operationId"] == get["operationId"]:
        del item["head"]


def _complete_operation(
    path: str, method: str, operation: dict[str, Any], schemas: dict[str, Any]
) -> None:
    name = operation["operationId"]
    responses: dict[str, Any] = operation["responses"]
    # tus discovery (OPTIONS /tus) is open like the probes: it tells what the server supports.
    open_path = path in OPEN_PATHS or (method == "options" and path == TUS_PATH)
    if open_path:
        operation["security"] = []
    if _only_fastapi_validation(responses.get("422")):
        del responses["422"]
    statuses = {int(s) for s in responses if s.isdigit() and int(s) >= 400}
    if not open_path:
        statuses |= _gate_statuses(path)
    if "requestBody" in operation or operation.get("parameters"):
        statuses.add(400)
    for error in sorted(statuses):
        responses[str(error)] = _problem_response(error, path)
    for status, response in responses.items():
        if not status.isdigit() or int(status) >= 400:
            continue
        headers = response.setdefault("headers", {})
        headers["X-Request-ID"] = _REQUEST_ID
        if not open_path:
            headers.update(_RATE_HEADERS)
        headers.update(_SUCCESS_HEADERS.get((name, status), {}))
        _add_media_example(response, (name, status), schemas)
    if method == "head":
        for response in responses.values():
            response.pop("content", None)  # HEAD answers have no body


def _only_fastapi_validation(response: dict[str, Any] | None) -> bool:
    """FastAPI's own 422 (pydantic errors): this server answers those as 400 problems."""
    return response is not None and response.get("description") == "Validation Error"


def _gate_statuses(path: str) -> set[int]:
    """What admission can answer before the route: no key, not allowed, rate limited, and the
    database (keys, IP rules) unavailable. The probes pass it untouched."""
    if path in OPEN_PATHS:
        return {503} if path == "/readyz" else set()
    return {401, 403, 429, 503}


def _problem_response(status: int, path: str) -> dict[str, Any]:
    headers: dict[str, Any] = {"X-Request-ID": _REQUEST_ID}
    if status == 401:
        headers["WWW-Authenticate"] = _header('`Bearer realm="filewallball"`')
    if status in (429, 503):
        headers.update(_RETRY_AFTER)
    if status == 429:
        headers.update(_RATE_HEADERS)
    example = {
        "type": "about:blank",
        "title": status_title(status),
        "status": status,
        "detail": _MEANINGS.get(status, status_title(status)),
        "instance": path,
        "code": _CODES.get(status, "error"),
        "request_id": "5e1f32be5cb247d582385b596eabb7f3",
    }
    return {
        "description": _MEANINGS.get(status, status_title(status)),
        "headers": headers,
        "content": {PROBLEM_JSON: {"schema": _PROBLEM_REF, "example": example}},
    }


def _add_media_example(
    response: dict[str, Any], key: tuple[str, str], schemas: dict[str, Any]
) -> None:
    for media_type, media in response.get("content", {}).items():
        if key in _MEDIA_EXAMPLES:
            media["example"] = _MEDIA_EXAMPLES[key]
            continue
        ref = media.get("schema", {}).get("$ref", "")
        examples = schemas.get(ref.rsplit("/", 1)[-1], {}).get("examples")
        if examples:
            media["example"] = examples[0]
        elif media_type.startswith(("application/octet-stream", "image/")):
            media["schema"] = {"type": "string", "format": "binary"}
