"""Resumable uploads: the tus 1.0.0 protocol at /tus (https://tus.io/protocols/resumable-upload).

Extensions: creation, creation-with-upload, creation-defer-length, termination, checksum
(sha256, sha1, md5) and expiration. The rules are the domain's (domain/resumable.py): this
module parses and writes tus headers, nothing more.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import replace
from email.utils import format_datetime
from typing import Annotated, Any

from fastapi import Depends, Request, Response

from filewallball.domain.errors import FileWallBallError, InvalidRequest, UploadNotFound
from filewallball.domain.models import MAX_STORED_INT, ResumableUpload
from filewallball.domain.resumable import (
    CHECKSUM_ALGORITHMS,
    Appended,
    Checksum,
    Creation,
    ResumableService,
)
from filewallball.domain.security import Principal
from filewallball.entrypoints.http.deps import base_url, container, principal
from filewallball.entrypoints.http.errors import HttpProblem, problem, status_for
from filewallball.entrypoints.http.openapi import problems, request_headers
from filewallball.entrypoints.http.routes import Router
from filewallball.entrypoints.http.telemetry import TUS_BYTES_RECEIVED, UPLOADED_BYTES
from filewallball.entrypoints.http.uploads import parse_visibility, request_body
from filewallball.settings import parse_duration

router = Router(tags=["resumable uploads (tus)"])

TUS_VERSION = "1.0.0"
EXTENSIONS = (
    "creation,creation-with-upload,creation-defer-length,termination,checksum,expiration,"
    "concatenation"
)
OFFSET_OCTET_STREAM = "application/offset+octet-stream"
MAX_METADATA_BYTES = 4096
# What browsers may send and read across origins (FWB_CORS_ORIGINS): tus-js-client needs them.
TUS_REQUEST_HEADERS = (
    "Tus-Resumable",
    "Upload-Length",
    "Upload-Defer-Length",
    "Upload-Metadata",
    "Upload-Offset",
    "Upload-Checksum",
    "Upload-Concat",
    "X-HTTP-Method-Override",
)
TUS_RESPONSE_HEADERS = (
    "Tus-Resumable",
    "Tus-Version",
    "Tus-Extension",
    "Tus-Max-Size",
    "Tus-Checksum-Algorithm",
    "Upload-Offset",
    "Upload-Length",
    "Upload-Defer-Length",
    "Upload-Metadata",
    "Upload-Expires",
    "Upload-Concat",
    "File-Id",
)
_RESUMABLE = {"Tus-Resumable": TUS_VERSION}


async def _service(request: Request) -> ResumableService:
    service: ResumableService = container(request).resumable_service()
    return service


Resumable = Annotated[ResumableService, Depends(_service)]
Caller = Annotated[Principal, Depends(principal)]


def _require_tus(request: Request) -> None:
    version = request.headers.get("tus-resumable")
    if version != TUS_VERSION:
        raise HttpProblem(
            412,
            "unsupported_tus_version",
            f"send Tus-Resumable: {TUS_VERSION} (got {version!r})",
            headers={"Tus-Version": TUS_VERSION, **_RESUMABLE},
        )


def _number(request: Request, name: str) -> int | None:
    raw = request.headers.get(name)
    if raw is None:
        return None
    raw = raw.strip()
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19 or int(raw) > MAX_STORED_INT:
        raise InvalidRequest(f"{name} must be a number of bytes", code=f"invalid_{_snake(name)}")
    return int(raw)


def _snake(name: str) -> str:
    return name.lower().replace("-", "_")


def parse_metadata(header: str | None) -> dict[str, str]:
    """Upload-Metadata: `key base64value` pairs, comma-separated; a key may have no value."""
    if header is None or not header.strip():
        return {}
    if len(header.encode("latin-1", "replace")) > MAX_METADATA_BYTES:
        raise InvalidRequest(
            f"Upload-Metadata is over {MAX_METADATA_BYTES} bytes", code="invalid_metadata"
        )
    pairs: dict[str, str] = {}
    for item in header.split(","):
        parts = item.strip().split(" ")
        key = parts[0]
        if not key or len(parts) > 2 or not key.isascii() or key in pairs:
            raise InvalidRequest(
                f"Upload-Metadata has a malformed or repeated key {key!r}", code="invalid_metadata"
            )
        try:
            value = base64.b64decode(parts[1], validate=True) if len(parts) == 2 else b""
        except (binascii.Error, ValueError) as error:  # ValueError: not ASCII
            raise InvalidRequest(
                f"Upload-Metadata's {key!r} is not base64", code="invalid_metadata"
            ) from error
        pairs[key] = value.decode("utf-8", "replace")
    return pairs


def _concat(request: Request) -> tuple[bool, list[str] | None]:
    """Upload-Concat: (a partial upload?, the partial uploads' ids of a final one)."""
    raw = request.headers.get("upload-concat")
    if raw is None:
        return False, None
    raw = raw.strip()
    if raw == "partial":
        return True, None
    kind, _, urls = raw.partition(";")
    if kind.strip() != "final":
        raise InvalidRequest(
            "Upload-Concat is `partial` or `final;<url> <url>...`", code="invalid_concat"
        )
    ids = [url.rstrip("/").rsplit("/tus/", 1)[-1] for url in urls.split()]
    if not ids or any("/" in upload_id for upload_id in ids):
        raise InvalidRequest("Upload-Concat: final lists upload URLs", code="invalid_concat")
    return False, ids


def _creation(request: Request, *, final: bool = False) -> Creation:
    if final:
        if "upload-length" in request.headers or "upload-defer-length" in request.headers:
            raise InvalidRequest(
                "a final upload's length is its parts': send no Upload-Length",
                code="invalid_upload_length",
            )
        length = None
    else:
        length = _number(request, "Upload-Length")
    deferred = request.headers.get("upload-defer-length")
    if deferred is not None and deferred.strip() != "1":
        raise InvalidRequest("Upload-Defer-Length must be 1", code="invalid_upload_defer_length")
    if not final and (length is None) == (deferred is None):
        raise InvalidRequest(
            "send Upload-Length, or Upload-Defer-Length: 1 to declare it later",
            code="invalid_upload_length",
        )
    raw_metadata = request.headers.get("upload-metadata", "")
    metadata = parse_metadata(raw_metadata)
    expires_in = None
    if raw := metadata.get("expires_in"):
        try:
            expires_in = parse_duration(raw)
        except ValueError as error:
            raise InvalidRequest(str(error), code="invalid_expiry") from error
    return Creation(
        length=length,
        # tus-js-client and Uppy send `filename` (and `name`); tuspy what it is given.
        filename=metadata.get("filename") or metadata.get("name") or "upload",
        visibility=parse_visibility(metadata.get("visibility")),
        expires_in_seconds=expires_in,
        metadata=raw_metadata.strip(),
    )


def _checksum(request: Request) -> Checksum | None:
    raw = request.headers.get("upload-checksum")
    if raw is None:
        return None
    algorithm, _, encoded = raw.strip().partition(" ")
    try:
        digest = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError) as error:  # ValueError: not ASCII
        raise InvalidRequest("Upload-Checksum is not base64", code="invalid_checksum") from error
    checksum = Checksum(algorithm.lower(), digest)
    if len(digest) != CHECKSUM_ALGORITHMS[checksum.algorithm]().digest_size:
        raise InvalidRequest(
            f"a {checksum.algorithm} digest is not {len(digest)} bytes", code="invalid_checksum"
        )
    return checksum


def _has_body(request: Request) -> bool:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != OFFSET_OCTET_STREAM:
        return False
    length = request.headers.get("content-length")
    return length is None or length.strip() != "0"


def _require_patch_body(request: Request) -> None:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != OFFSET_OCTET_STREAM:
        raise HttpProblem(
            415,
            "expected_offset_octet_stream",
            f"a PATCH carries Content-Type: {OFFSET_OCTET_STREAM}",
            headers=_RESUMABLE,
        )


def _state(upload: ResumableUpload) -> dict[str, str]:
    headers = {"Upload-Offset": str(upload.offset), **_RESUMABLE, "Cache-Control": "no-store"}
    if upload.file_id is not None:
        headers["File-Id"] = upload.file_id
    else:
        headers["Upload-Expires"] = format_datetime(upload.expires_at, usegmt=True)
    return headers


def _count(appended: Appended) -> None:
    TUS_BYTES_RECEIVED.inc(appended.received)
    if appended.upload.complete and appended.received:
        UPLOADED_BYTES.inc(appended.upload.offset)


def _options_headers(service: ResumableService) -> dict[str, str]:
    return {
        **_RESUMABLE,
        "Tus-Version": TUS_VERSION,
        "Tus-Extension": EXTENSIONS,
        "Tus-Max-Size": str(service.max_size),
        "Tus-Checksum-Algorithm": ",".join(CHECKSUM_ALGORITHMS),
    }


def _described(status: int, description: str, *headers: str) -> dict[int | str, dict[str, Any]]:
    return {
        status: {
            "description": description,
            "headers": {name: {"schema": {"type": "string"}} for name in headers},
        }
    }


@router.options(
    "/tus",
    status_code=204,
    response_class=Response,
    responses=_described(
        204,
        "The tus version, extensions, largest upload and checksum algorithms",
        "Tus-Version",
        "Tus-Extension",
        "Tus-Max-Size",
        "Tus-Checksum-Algorithm",
    ),
    summary="What this tus server supports (no key needed)",
)
async def tus_options(service: Resumable) -> Response:
    return Response(status_code=204, headers=_options_headers(service))


@router.options("/tus/{upload_id}", status_code=204, include_in_schema=False)
async def tus_upload_options(upload_id: str, service: Resumable) -> Response:
    return Response(status_code=204, headers=_options_headers(service))


@router.post(
    "/tus",
    status_code=201,
    response_class=Response,
    responses=_described(
        201,
        "Created: continue it at Location",
        "Location",
        "Upload-Offset",
        "Upload-Expires",
        "File-Id",
    )
    | problems(400, 412, 413, 415, 422, 429, 460, 503, 507),
    openapi_extra=request_headers(
        "Tus-Resumable",
        "Upload-Length",
        "Upload-Defer-Length",
        "Upload-Metadata",
        "Upload-Checksum",
        "Upload-Concat",
    ),
    summary="Create a resumable upload (tus creation; with a body: creation-with-upload)",
)
async def tus_create(request: Request, caller: Caller, service: Resumable) -> Response:
    _require_tus(request)
    partial, parts = _concat(request)
    if parts is not None:
        final = await service.concatenate(caller, _creation(request, final=True), parts)
        UPLOADED_BYTES.inc(final.offset)
        location = f"{base_url(request)}/tus/{final.id}"
        return Response(status_code=201, headers={"Location": location, **_state(final)})
    creation = replace(_creation(request), partial=partial)
    # An empty file has no PATCH to complete it (tus clients send none): it is made now.
    with_body = _has_body(request) or (creation.length == 0 and not partial)
    checksum = _checksum(request) if with_body else None
    upload = await service.create(caller, creation)
    location = f"{base_url(request)}/tus/{upload.id}"
    if with_body:
        try:
            appended = await service.append(
                caller,
                upload.id,
                request_body(request),
                offset=0,
                checksum=checksum,
                size=_number(request, "Content-Length"),
            )
        except FileWallBallError as error:
            # The upload stands (unless its file was refused): the client resumes at Location.
            return problem(
                status_for(error),
                error.code,
                error.detail,
                scope=request.scope,
                headers={"Location": location, **_RESUMABLE},
            )
        _count(appended)
        upload = appended.upload
    return Response(status_code=201, headers={"Location": location, **_state(upload)})


@router.head(
    "/tus/{upload_id}",
    response_class=Response,
    responses=_described(
        200,
        "The upload's state",
        "Upload-Offset",
        "Upload-Length",
        "Upload-Defer-Length",
        "Upload-Metadata",
        "Upload-Expires",
        "File-Id",
    )
    | problems(404, 410, 412),
    openapi_extra=request_headers("Tus-Resumable"),
    summary="Where a resumable upload is (Upload-Offset), and its file once complete (File-Id)",
)
async def tus_head(
    upload_id: str, request: Request, caller: Caller, service: Resumable
) -> Response:
    _require_tus(request)
    upload = await service.settled(caller, upload_id)
    headers = _state(upload)
    if upload.length is None:
        headers["Upload-Defer-Length"] = "1"
    else:
        headers["Upload-Length"] = str(upload.length)
    if upload.metadata:
        headers["Upload-Metadata"] = upload.metadata
    if upload.concat:
        headers["Upload-Concat"] = upload.concat
    return Response(status_code=200, headers=headers)


@router.patch(
    "/tus/{upload_id}",
    status_code=204,
    response_class=Response,
    responses=_described(204, "Stored", "Upload-Offset", "Upload-Expires", "File-Id")
    | problems(400, 404, 409, 410, 412, 413, 415, 422, 423, 460, 503, 507),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {OFFSET_OCTET_STREAM: {"schema": {"type": "string", "format": "binary"}}},
        }
    }
    | request_headers("Tus-Resumable", "Upload-Offset", "Upload-Length", "Upload-Checksum"),
    summary="Send bytes of a resumable upload at Upload-Offset (the last ones make the file)",
)
async def tus_patch(
    upload_id: str, request: Request, caller: Caller, service: Resumable
) -> Response:
    _require_tus(request)
    _require_patch_body(request)
    offset = _number(request, "Upload-Offset")
    if offset is None:
        raise InvalidRequest("a PATCH carries Upload-Offset", code="invalid_upload_offset")
    appended = await service.append(
        caller,
        upload_id,
        request_body(request),
        offset=offset,
        length=_number(request, "Upload-Length"),
        checksum=_checksum(request),
        size=_number(request, "Content-Length"),
    )
    _count(appended)
    return Response(status_code=204, headers=_state(appended.upload))


@router.delete(
    "/tus/{upload_id}",
    status_code=204,
    response_class=Response,
    responses=_described(204, "Terminated") | problems(404, 412),
    openapi_extra=request_headers("Tus-Resumable"),
    summary="Terminate a resumable upload: its bytes are removed (a completed one's file stays)",
)
async def tus_delete(
    upload_id: str, request: Request, caller: Caller, service: Resumable
) -> Response:
    _require_tus(request)
    await service.terminate(caller, upload_id)
    return Response(status_code=204, headers=_RESUMABLE)


@router.post("/tus/{upload_id}", include_in_schema=False)
async def tus_override(
    upload_id: str, request: Request, caller: Caller, service: Resumable
) -> Response:
    """X-HTTP-Method-Override, for clients whose environment cannot send PATCH or DELETE."""
    method = request.headers.get("x-http-method-override", "").strip().upper()
    if method == "PATCH":
        return await tus_patch(upload_id, request, caller, service)
    if method == "DELETE":
        return await tus_delete(upload_id, request, caller, service)
    if method == "HEAD":
        return await tus_head(upload_id, request, caller, service)
    raise UploadNotFound(f"POST /tus/{upload_id} needs X-HTTP-Method-Override: PATCH or DELETE")
