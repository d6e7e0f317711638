"""Serve a file's bytes (download, with RFC 9110 ranges and conditions) and its text preview."""

from __future__ import annotations

import base64
from email.utils import format_datetime
from typing import Annotated, Any
from urllib.parse import quote

import structlog
from anyascii import anyascii
from fastapi import Query, Request, Response

from filewallball.domain.errors import FileWallBallError
from filewallball.domain.models import ByteRange, FileRecord, ImageFormat, ThumbnailSize
from filewallball.entrypoints.http.conditional import (
    Precondition,
    Unsatisfiable,
    Validators,
    evaluate_headers,
    if_range_allows,
    parse_ranges,
)
from filewallball.entrypoints.http.context import context_of
from filewallball.entrypoints.http.deps import Caller, FileRequest, Files, Thumbnails
from filewallball.entrypoints.http.errors import HttpProblem
from filewallball.entrypoints.http.openapi import problems, request_headers
from filewallball.entrypoints.http.responses import BlobResponse, Segment, byteranges
from filewallball.entrypoints.http.routes import Router

router = Router(tags=["content"])
log = structlog.get_logger("filewallball")

# Uploaded bytes are never run by a browser: no sniffing, and a sandbox for whatever renders.
_CONTENT_SAFETY = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox"}

_DOWNLOAD_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/octet-stream": {}}, "description": "The whole file"},
    206: {"description": "One range, or multipart/byteranges for several"},
    302: {
        "description": "With FWB_S3_PRESIGNED_DOWNLOADS, a whole-file GET: the file from a"
        " short-lived presigned URL of the object store, after authentication and audit",
        "headers": {"Location": {"description": "The presigned URL", "schema": {"type": "string"}}},
    },
    304: {"description": "Not modified (If-None-Match / If-Modified-Since)"},
    **problems(404, 412, 416, 503),
}
# The presigned URL is the caller's alone and soon expires: no cache may keep or share it.
_REDIRECT_HEADERS = {"Cache-Control": "private, no-store", "Referrer-Policy": "no-referrer"}
_DOWNLOAD_HEADERS = request_headers(
    "Range", "If-Range", "If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since"
)


# Quoting troubles in the header, and what a saved name cannot hold on Windows.
_UNSAFE_IN_FALLBACK = frozenset('"\\%/:*?<>|')


def content_disposition(disposition: str, filename: str) -> str:
    """RFC 6266: the exact name as RFC 8187 `filename*`, and an ASCII fallback for clients
    that save `filename` (curl -OJ, httpie): a transliteration (`résumé.pdf` -> `resume.pdf`,
    `данные.txt` -> `dannye.txt`), `_` only for what has none."""
    fallback = "".join(
        c if 0x20 <= ord(c) < 0x7F and c not in _UNSAFE_IN_FALLBACK else "_"
        for c in anyascii(filename)
    )
    return f"{disposition}; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


def _representation_headers(record: FileRecord) -> dict[str, str]:
    digest = base64.b64encode(bytes.fromhex(record.sha256)).decode()
    validators = Validators.of(record)
    return {
        "ETag": validators.etag,
        "Last-Modified": format_datetime(validators.last_modified, usegmt=True),
        "Accept-Ranges": "bytes",
        "Cache-Control": "private, no-cache",
        "Repr-Digest": f"sha-256=:{digest}:",
        **_CONTENT_SAFETY,
    }


def _precondition(request: Request, record: FileRecord) -> Precondition:
    return evaluate_headers(request.method, request.headers, Validators.of(record))


def _ranges(request: Request, record: FileRecord) -> list[ByteRange] | None:
    header = request.headers.get("range")
    validators = Validators.of(record)
    if header is None or not if_range_allows(request.headers.get("if-range"), validators):
        return None
    try:
        return parse_ranges(header, record.size)
    except Unsatisfiable:
        raise HttpProblem(
            416,
            "range_not_satisfiable",
            f"no requested range lies within the file's {record.size} bytes",
            headers={"Content-Range": f"bytes */{record.size}", **_CONTENT_SAFETY},
        ) from None


@router.head(
    "/download/{file_id}",
    operation_id="download_head",
    responses=_DOWNLOAD_RESPONSES,
    openapi_extra=_DOWNLOAD_HEADERS,
    response_class=Response,
    summary="A download's headers, without the bytes",
)
@router.get(
    "/download/{file_id}",
    operation_id="download",
    responses=_DOWNLOAD_RESPONSES,
    openapi_extra=_DOWNLOAD_HEADERS,
    response_class=Response,
    summary="Download a file's bytes",
)
async def download(file_id: str, request: Request, call: FileRequest) -> Any:
    head = request.method == "HEAD"
    service, caller = call.files, call.caller
    record = await service.get(caller, file_id)
    headers = _representation_headers(record)
    decision = _precondition(request, record)
    if decision is Precondition.NOT_MODIFIED:
        return Response(status_code=304, headers=headers)
    if decision is Precondition.FAILED:
        raise HttpProblem(412, "precondition_failed", "a precondition of the request is false")
    ranges = _ranges(request, record)
    headers["Content-Disposition"] = content_disposition("attachment", record.filename)
    content_type = str(record.content_type)
    if ranges is None:
        status = 200
        segments = [Segment(blob_range=ByteRange(0, record.size - 1))] if record.size else []
        headers["Content-Digest"] = headers["Repr-Digest"]
    elif len(ranges) == 1:
        status, rng = 206, ranges[0]
        segments = [Segment(blob_range=rng)]
        headers["Content-Range"] = f"bytes {rng.start}-{rng.end}/{record.size}"
    else:
        status = 206
        content_type, segments = byteranges(ranges, size=record.size, content_type=content_type)
    headers["Content-Type"] = content_type
    if status == 200 and not head and record.size:
        url = await service.presigned_download(
            caller, record, content_disposition=headers["Content-Disposition"]
        )
        if url is not None:
            return Response(status_code=302, headers={"Location": url, **_REDIRECT_HEADERS})
    length = sum(s.blob_range.length for s in segments if s.blob_range)
    reader = None if head else await service.open_record(caller, record)

    async def audit(sent: int) -> None:
        try:
            await service.downloaded(caller, record, sent=sent, length=length)
        except FileWallBallError as error:
            # The response is over: nobody left to answer with an error.
            log.warning("audit_unavailable", reason=error.detail)

    whole = status == 200 and reader is not None and reader.path is not None
    return BlobResponse(
        reader=reader,
        status=status,
        headers=headers,
        segments=segments,
        send_body=not head,
        accel_redirect=accel_redirect(request, reader.path) if whole and reader else None,
        on_sent=None if head else audit,
    )


def accel_redirect(request: Request, path: str | None) -> str | None:
    """The internal URI for nginx to send `path` from, when a trusted proxy asked for that.

    The Rack::Sendfile convention: nginx sends `X-Sendfile-Type: X-Accel-Redirect` and
    `X-Accel-Mapping: <blob folder>=<internal location>` (docs/deployment.md); the answer then
    carries `X-Accel-Redirect` and no body, and nginx sends the file with sendfile.
    """
    if path is None or not context_of(request.scope).from_trusted_proxy:
        return None
    if request.headers.get("x-sendfile-type", "").lower() != "x-accel-redirect":
        return None
    for mapping in request.headers.get("x-accel-mapping", "").split(","):
        folder, equals, location = mapping.strip().partition("=")
        if equals and folder and path.startswith(folder):
            return location + quote(path.removeprefix(folder))
    return None


@router.get(
    "/view/{file_id}",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {}}, "description": "The start of the file as UTF-8 text"},
        **problems(404, 415, 503),
    },
    summary="Preview a text file",
)
async def preview(
    file_id: str,
    service: Files,
    caller: Caller,
    lines: Annotated[
        int | None, Query(ge=1, le=100_000, description="At most this many lines")
    ] = None,
) -> Response:
    preview = await service.preview(caller, file_id, max_lines=lines)
    headers = {
        "ETag": Validators.of(preview.record).etag,
        "Cache-Control": "private, no-cache",
        "Content-Disposition": content_disposition("inline", preview.record.filename),
        **_CONTENT_SAFETY,
    }
    if preview.truncated:
        headers["X-Preview-Truncated"] = "true"
    headers["X-Preview-Charset"] = preview.charset
    return Response(preview.text, media_type="text/plain; charset=utf-8", headers=headers)


_ACCEPTABLE = {
    "image/webp": ImageFormat.WEBP,
    "image/avif": ImageFormat.AVIF,
    "image/jpeg": ImageFormat.JPEG,
}
# AVIF is smaller but several times slower to encode: on a tie, WebP wins.
_PREFERENCE = [ImageFormat.WEBP, ImageFormat.AVIF, ImageFormat.JPEG]


def negotiate_image_format(accept: str | None) -> ImageFormat:
    """The best format the Accept header allows (q-values honoured); JPEG when none is named."""
    weights: dict[ImageFormat, float] = {}
    for item in (accept or "").split(","):
        media, *params = (part.strip() for part in item.split(";"))
        image_format = _ACCEPTABLE.get(media.lower())
        if image_format is None:
            continue
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        weights[image_format] = max(quality, weights.get(image_format, 0.0))
    ranked = [f for f in _PREFERENCE if weights.get(f, 0.0) > 0]
    return max(ranked, key=lambda f: weights[f]) if ranked else ImageFormat.JPEG


@router.get(
    "/thumbnails/{file_id}",
    response_class=Response,
    responses={
        200: {
            "content": {"image/webp": {}, "image/avif": {}, "image/jpeg": {}},
            "description": "The thumbnail, in the format Accept prefers",
        },
        304: {"description": "Not modified"},
        **problems(404, 415, 422, 503),
    },
    summary="A thumbnail of an image (WebP, AVIF or JPEG by Accept)",
    openapi_extra=request_headers("If-None-Match"),
)
async def get_thumbnail(
    file_id: str,
    request: Request,
    thumbnails: Thumbnails,
    caller: Caller,
    size: ThumbnailSize = ThumbnailSize.MEDIUM,
) -> Response:
    image_format = negotiate_image_format(request.headers.get("accept"))
    rendition = await thumbnails.thumbnail(caller, file_id, size=size, image_format=image_format)
    headers = {
        "ETag": rendition.etag,
        # A rendition of immutable content never changes; access control still applies.
        "Cache-Control": "private, max-age=31536000, immutable",
        "Vary": "Accept",
        "Content-Disposition": content_disposition(
            "inline", f"{rendition.record.filename}.{image_format.value}"
        ),
        **_CONTENT_SAFETY,
    }
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None and rendition.etag in [
        t.strip() for t in if_none_match.split(",")
    ]:
        return Response(status_code=304, headers=headers)
    return Response(rendition.data, media_type=image_format.media_type, headers=headers)
