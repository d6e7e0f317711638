"""Upload, read, list and delete file records."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.convertors import StringConvertor, register_url_convertor

from filewallball.domain.errors import InvalidRequest, PreconditionFailed
from filewallball.domain.models import (
    MAX_PAGE_SIZE,
    Cursor,
    FileRecord,
    ListQuery,
    SortKey,
    validate_type_pattern,
)
from filewallball.domain.services import Expectation
from filewallball.entrypoints.http.conditional import Precondition, Validators, evaluate_headers
from filewallball.entrypoints.http.deps import FileRequest
from filewallball.entrypoints.http.openapi import problems, request_headers
from filewallball.entrypoints.http.routes import Router
from filewallball.entrypoints.http.schemas import FileList, FileOut
from filewallball.entrypoints.http.telemetry import UPLOADED_BYTES
from filewallball.entrypoints.http.uploads import MultipartUpload, raw_upload

router = Router(tags=["files"])


class _AnyNameConvertor(StringConvertor):
    """A path segment or more, control characters included: names are sanitised, not routed."""

    regex = "(?s:.+)"


register_url_convertor("anyname", _AnyNameConvertor())


_MULTIPART_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "visibility": {"type": "string", "enum": ["private", "public"]},
                        "expires_at": {"type": "string", "format": "date-time"},
                        "expires_in": {"type": "string", "description": "3600, 90s, 15m, 12h, 7d"},
                    },
                }
            }
        },
    }
}
_RAW_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


def _created(record_out: FileOut) -> JSONResponse:
    UPLOADED_BYTES.inc(record_out.size)
    return JSONResponse(
        record_out.model_dump(mode="json"),
        status_code=201,
        headers={"Location": f"/files/{record_out.id}"},
    )


@router.post(
    "/upload",
    status_code=201,
    response_model=FileOut,
    openapi_extra=_MULTIPART_BODY,
    responses=problems(400, 408, 413, 415, 422, 503, 507),
    summary="Upload a file (multipart/form-data, field `file`)",
)
async def upload(request: Request, call: FileRequest) -> JSONResponse:
    form = MultipartUpload(request, max_file_bytes=call.files.max_upload_bytes)
    record = await call.files.upload(call.caller, await form.start())
    return _created(FileOut.of(record, call.base))


@router.put(
    "/upload/{filename:anyname}",
    status_code=201,
    response_model=FileOut,
    openapi_extra=_RAW_BODY | request_headers("Content-Digest"),
    responses=problems(400, 408, 413, 415, 422, 503, 507),
    summary="Upload the raw request body as a file (curl --upload-file)",
)
async def upload_raw(
    filename: str,
    request: Request,
    call: FileRequest,
    visibility: Annotated[str | None, Query(pattern="^(private|public)$")] = None,
) -> JSONResponse:
    upload = raw_upload(request, filename=filename, visibility=visibility)
    record = await call.files.upload(call.caller, upload)
    return _created(FileOut.of(record, call.base))


@router.get(
    "/files/{file_id}",
    response_model=FileOut,
    responses={304: {"description": "Not modified (If-None-Match)"}, **problems(404, 412, 503)},
    openapi_extra=request_headers("If-None-Match", "If-Match"),
)
async def get_file(file_id: str, request: Request, call: FileRequest) -> Response:
    record = await call.files.get(call.caller, file_id)
    etag = Validators.of_record(record).etag
    headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
    if (outcome := _precondition(request, record)) is Precondition.NOT_MODIFIED:
        return Response(status_code=304, headers=headers)
    if outcome is Precondition.FAILED:
        raise PreconditionFailed(f"file {record.id!r} does not match If-Match")
    return JSONResponse(FileOut.of(record, call.base).model_dump(mode="json"), headers=headers)


@router.get("/files", response_model=FileList, responses=problems(400, 503))
async def list_files(
    call: FileRequest,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 50,
    cursor: Annotated[str | None, Query(max_length=2048)] = None,
    content_type: Annotated[
        str | None, Query(max_length=255, description="`image/png` or `image/*`")
    ] = None,
    q: Annotated[str | None, Query(max_length=255, description="name contains")] = None,
    sort: SortKey = SortKey.CREATED_AT_DESC,
    trash: Annotated[bool, Query(description="List the trash (own files; admins: all)")] = False,
) -> FileList:
    if content_type is not None:
        try:
            content_type = validate_type_pattern(content_type)
        except ValueError as error:
            raise InvalidRequest(str(error), code="invalid_content_type") from error
    query = ListQuery(
        limit=limit,
        sort=sort,
        cursor=Cursor.decode(cursor) if cursor else None,
        content_type=content_type,
        name_contains=q or None,
        trash=trash,
    )
    page = await call.files.list(call.caller, query)
    base = call.base
    return FileList(
        items=[FileOut.of(record, base) for record in page.items],
        next_cursor=page.next_cursor.encode() if page.next_cursor else None,
    )


@router.delete(
    "/files/{file_id}",
    status_code=204,
    responses=problems(404, 412, 503),
    openapi_extra=request_headers("If-Match", "If-Unmodified-Since"),
)
async def delete_file(file_id: str, request: Request, call: FileRequest) -> Response:
    await call.files.delete(call.caller, file_id, expected=_expectation(request))
    return Response(status_code=204)


@router.post(
    "/files/{file_id}/restore",
    response_model=FileOut,
    responses=problems(400, 403, 404, 412, 503),
    openapi_extra=request_headers("If-Match", "If-Unmodified-Since"),
)
async def restore_file(file_id: str, request: Request, call: FileRequest) -> FileOut:
    """Bring a file back from the trash (with FWB_TRASH_RETENTION set)."""
    record = await call.files.restore(call.caller, file_id, expected=_expectation(request))
    return FileOut.of(record, call.base)


def _precondition(request: Request, record: FileRecord) -> Precondition:
    # A record's status changes keep its date: its tag decides.
    return evaluate_headers(
        request.method, request.headers, Validators.of_record(record), dated=False
    )


def _expectation(request: Request) -> Expectation | None:
    """The request's If-Match / If-Unmodified-Since as a condition on the record, if any."""
    if "if-match" not in request.headers and "if-unmodified-since" not in request.headers:
        return None
    return lambda record: _precondition(request, record) is Precondition.PROCEED
