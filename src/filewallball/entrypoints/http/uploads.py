"""Turn an HTTP request body into a streaming UploadRequest: multipart/form-data or raw bytes."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from filewallball.domain.errors import (
    ClientDisconnected,
    DigestMismatch,
    FileTooLarge,
    InvalidRequest,
)
from filewallball.domain.models import MAX_STORED_INT, Sha256, Visibility, utc_instant
from filewallball.domain.uploads import UploadRequest
from filewallball.entrypoints.http.deps import container
from filewallball.entrypoints.http.errors import HttpProblem
from filewallball.settings import parse_duration

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

FILE_FIELD = "file"
# Everything in a multipart body that is not the file (delimiters, part headers, small fields,
# a preamble before the first part and an epilogue after the last) must fit in this; a body of
# junk cannot grow without bound.
FORM_OVERHEAD_BYTES = 1024 * 1024
MAX_FIELD_BYTES = 8 * 1024
# Parts cost CPU even when empty (2,000,000 of them took 15 s): a form is a file and a few
# fields, so this many parts is already far more than any client sends.
MAX_FORM_PARTS = 100
_LENGTH_DIGITS = len(str(MAX_STORED_INT))

_DIGEST_MEMBER = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=\s*:([A-Za-z0-9+/=]*):\s*$")


def parse_content_digest(header: str | None) -> bytes | None:
    """The sha-256 digest of an RFC 9530 Content-Digest; None when absent or another algorithm."""
    if header is None:
        return None
    for member in header.split(","):
        match = _DIGEST_MEMBER.match(member)
        if match is None:
            raise InvalidRequest("Content-Digest is malformed", code="invalid_digest")
        algorithm, value = match.groups()
        if algorithm.lower() == "sha-256":
            try:
                digest = base64.b64decode(value, validate=True)
            except binascii.Error as error:
                raise InvalidRequest(
                    "Content-Digest is not base64", code="invalid_digest"
                ) from error
            if len(digest) != 32:
                raise InvalidRequest("a sha-256 digest is 32 bytes", code="invalid_digest")
            return digest
    return None


def parse_visibility(value: str | None) -> Visibility:
    if value is None or value == "":
        return Visibility.PRIVATE
    try:
        return Visibility(value.strip().lower())
    except ValueError as error:
        raise InvalidRequest(
            "visibility must be 'private' or 'public'", code="invalid_visibility"
        ) from error


def parse_expiry(fields: Mapping[str, str | None]) -> tuple[datetime | None, int | None]:
    """(expires_at, expires_in seconds) from form fields or query parameters."""
    raw_at, raw_in = fields.get("expires_at"), fields.get("expires_in")
    expires_at = expires_in = None
    if raw_at:
        try:
            expires_at = datetime.fromisoformat(raw_at.strip())
        except ValueError as error:
            raise InvalidRequest(
                "expires_at is not an ISO 8601 date-time", code="invalid_expiry"
            ) from error
        try:
            utc_instant(expires_at)
        except ValueError as error:
            raise InvalidRequest(f"expires_at {error}", code="invalid_expiry") from error
    if raw_in:
        try:
            expires_in = parse_duration(raw_in)
        except ValueError as error:
            raise InvalidRequest(str(error), code="invalid_expiry") from error
    return expires_at, expires_in


@dataclass(slots=True)
class BodyDeadline:
    """How long an upload's body may keep the server waiting (FWB_BODY_READ_TIMEOUT and
    FWB_BODY_MIN_RATE): never `timeout` seconds without new bytes, and at least
    `min_rate * timeout` bytes in each `timeout` seconds spent waiting for them.

    Only time spent waiting for the client counts: a slow disk or object store between two
    reads is not the client's fault.
    """

    timeout: float
    min_rate: int
    _waited: float = 0.0
    _received: int = 0

    def next_wait(self) -> float:
        """The longest wait for the next bytes."""
        if self._received >= self.min_rate * self.timeout:
            return self.timeout
        return self.timeout - self._waited

    def arrived(self, size: int, *, waited: float) -> None:
        self._waited += waited
        if self._waited >= self.timeout:
            # A span is over, and it brought enough (else the wait would have timed out).
            self._waited -= self.timeout
            self._received = 0
        self._received += size


async def request_body(request: Request) -> AsyncIterator[bytes]:
    """The body's chunks, within FWB_BODY_READ_TIMEOUT and FWB_BODY_MIN_RATE (else 408)."""
    settings = container(request).settings()
    deadline = BodyDeadline(timeout=settings.body_read_timeout, min_rate=settings.body_min_rate)
    loop = asyncio.get_running_loop()
    stream = request.stream()
    try:
        while True:
            started = loop.time()
            try:
                async with asyncio.timeout(deadline.next_wait()):
                    chunk = await anext(stream, None)
            except TimeoutError:
                # A trickling client holds a connection and a staged file: answer and hang up.
                raise HttpProblem(
                    408,
                    "request_timeout",
                    f"the body arrived too slowly (at least {settings.body_min_rate} bytes a "
                    f"second, never {settings.body_read_timeout:g} s without any)",
                    headers={"Connection": "close"},
                ) from None
            if chunk is None:
                return
            deadline.arrived(len(chunk), waited=loop.time() - started)
            yield chunk
    except ClientDisconnect as error:
        raise ClientDisconnected("the client went away mid-upload") from error


def _declared_length(request: Request) -> int | None:
    raw = request.headers.get("content-length")
    if raw is None:
        return None
    # ASCII digits only: str.isdigit() also takes "\u00b2", which int() refuses.
    if not (raw.isascii() and raw.isdigit()):
        raise InvalidRequest("Content-Length is not a number", code="invalid_content_length")
    length = int(raw) if len(raw) <= _LENGTH_DIGITS else MAX_STORED_INT + 1
    if length > MAX_STORED_INT:
        raise InvalidRequest(
            f"Content-Length is over {MAX_STORED_INT}", code="invalid_content_length"
        )
    return length


def raw_upload(request: Request, *, filename: str, visibility: str | None) -> UploadRequest:
    """The request body is the file (PUT /upload/{filename}, curl --upload-file).

    A PUT with Content-Range is a partial update (RFC 9110 §14.5): storing its bytes as the
    whole file would keep a fragment under the file's name, so it is refused.
    """
    if "content-range" in request.headers:
        raise InvalidRequest(
            "PUT /upload takes a whole file; Content-Range is not accepted"
            " (send the whole file in one request)",
            code="content_range_not_allowed",
        )
    digest = parse_content_digest(request.headers.get("content-digest"))
    expires_at, expires_in = parse_expiry(request.query_params)
    return UploadRequest(
        expires_at=expires_at,
        expires_in_seconds=expires_in,
        filename=filename,
        chunks=request_body(request),
        visibility=parse_visibility(visibility),
        expected_sha256=Sha256.from_digest(digest) if digest else None,
        declared_size=_declared_length(request),
    )


@dataclass
class _Part:
    headers: dict[str, str] = field(default_factory=dict)
    name: str | None = None
    filename: str | None = None
    is_file: bool = False
    value: bytearray = field(default_factory=bytearray)


@dataclass
class _FormState:
    """What the parser's callbacks have seen so far."""

    file_data: list[bytes] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)
    part: _Part = field(default_factory=_Part)
    header_name: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)
    file_seen: bool = False
    file_done: bool = False
    file_digest: bytes | None = None
    filename: str | None = None
    ended: bool = False
    overhead: int = 0
    parts: int = 0


class MultipartUpload:
    """Feeds body chunks to python-multipart and yields the `file` part's bytes as they arrive."""

    def __init__(self, request: Request, *, max_file_bytes: int) -> None:
        content_type, params = parse_options_header(request.headers.get("content-type"))
        boundary = params.get(b"boundary")
        if content_type != b"multipart/form-data" or not boundary:
            raise InvalidRequest(
                "POST /upload takes multipart/form-data with a 'file' field "
                "(or send the raw bytes with PUT /upload/{filename})",
                code="expected_multipart",
            )
        length = _declared_length(request)
        if length is not None and length > max_file_bytes + FORM_OVERHEAD_BYTES:
            raise FileTooLarge(max_file_bytes)
        self._body = request_body(request)
        self._state = _FormState()
        self._body_digest = parse_content_digest(request.headers.get("content-digest"))
        self._body_hasher = hashlib.sha256() if self._body_digest is not None else None
        self._query: dict[str, str | None] = dict(request.query_params)
        self._delimiter_bytes = len(boundary) + 6  # CRLF "--" boundary CRLF
        try:
            self._parser = MultipartParser(boundary, self._callbacks())
        except Exception as error:  # python-multipart rejects absurd boundaries with a bare error
            raise InvalidRequest(
                "the multipart boundary is invalid", code="invalid_multipart"
            ) from error

    async def start(self) -> UploadRequest:
        """Read up to the file part's headers; fields before it are known then."""
        state = self._state
        while not state.file_seen:
            chunk = await anext(self._body, None)
            if chunk is None:
                self._finish()
                raise InvalidRequest("the form has no 'file' field", code="missing_file")
            self._feed(chunk)
        expires_at, expires_in = parse_expiry(self._fields())
        request = UploadRequest(
            filename=state.filename or "",
            chunks=self._file_chunks(),
            visibility=self._visibility(),
            expires_at=expires_at,
            expires_in_seconds=expires_in,
        )
        self._upload = request
        return request

    async def _file_chunks(self) -> AsyncIterator[bytes]:
        state = self._state
        while True:
            while state.file_data:
                yield state.file_data.pop(0)
            if state.file_done:
                break
            chunk = await anext(self._body, None)
            if chunk is None:
                self._finish()
                raise InvalidRequest("the body ended inside the file part", code="truncated_body")
            self._feed(chunk)
        # Drain the rest: fields may follow the file, and the body must be whole.
        async for chunk in self._body:
            self._feed(chunk)
        self._finish()
        self._upload.visibility = self._visibility()
        self._upload.expires_at, self._upload.expires_in_seconds = parse_expiry(self._fields())
        if state.file_digest is not None:
            self._upload.expected_sha256 = Sha256.from_digest(state.file_digest)

    def _fields(self) -> dict[str, str | None]:
        """Form fields, over the same names in the query string."""
        return {**self._query, **self._state.fields}

    def _visibility(self) -> Visibility:
        return parse_visibility(self._fields().get("visibility"))

    def _feed(self, chunk: bytes) -> None:
        if self._body_hasher is not None:
            self._body_hasher.update(chunk)
        in_epilogue = self._state.ended
        try:
            self._parser.write(chunk)
        except MultipartParseError as error:
            raise InvalidRequest(
                f"malformed multipart body: {error}", code="invalid_multipart"
            ) from error
        # The parser skips a preamble and an epilogue without a callback: a chunk that is all
        # preamble (no part began) or all epilogue counts whole, so neither is read forever.
        if in_epilogue or not self._state.parts:
            self._charge(len(chunk))

    def _finish(self) -> None:
        self._parser.finalize()
        if not self._state.ended:
            raise InvalidRequest(
                "the multipart body ended before its closing boundary", code="truncated_body"
            )
        if self._body_hasher is not None and self._body_hasher.digest() != self._body_digest:
            raise DigestMismatch("the request body does not match its Content-Digest")

    def _callbacks(self) -> MultipartCallbacks:
        state = self._state

        def on_part_begin() -> None:
            state.part = _Part()
            state.parts += 1
            if state.parts > MAX_FORM_PARTS:
                raise InvalidRequest(
                    f"the form has more than {MAX_FORM_PARTS} parts", code="form_too_large"
                )
            self._charge(self._delimiter_bytes)

        def on_header_field(data: bytes, start: int, end: int) -> None:
            state.header_name += data[start:end]
            self._charge(end - start)

        def on_header_value(data: bytes, start: int, end: int) -> None:
            state.header_value += data[start:end]
            self._charge(end - start)

        def on_header_end() -> None:
            self._charge(4)  # ": " and CRLF
            name = state.header_name.decode("latin-1").strip().lower()
            # latin-1 keeps the raw bytes: parse_options_header re-encodes to latin-1, and the
            # parameters (a UTF-8 filename, as browsers send it) are decoded from those bytes.
            state.part.headers[name] = state.header_value.decode("latin-1").strip()
            state.header_name.clear()
            state.header_value.clear()

        def on_headers_finished() -> None:
            part = state.part
            _, params = parse_options_header(part.headers.get("content-disposition", ""))
            name = params.get(b"name")
            part.name = name.decode("utf-8", "replace") if name is not None else None
            raw_filename = params.get(b"filename")
            if part.name == FILE_FIELD:
                if state.file_seen:
                    raise InvalidRequest("send one 'file' field per upload", code="multiple_files")
                part.is_file = True
                state.file_seen = True
                state.filename = raw_filename.decode("utf-8", "replace") if raw_filename else ""
                state.file_digest = parse_content_digest(part.headers.get("content-digest"))

        def on_part_data(data: bytes, start: int, end: int) -> None:
            part = state.part
            if part.is_file:
                state.file_data.append(data[start:end])
                return
            part.value += data[start:end]
            self._charge(end - start)
            if len(part.value) > MAX_FIELD_BYTES:
                raise InvalidRequest(
                    f"form field {part.name!r} is over {MAX_FIELD_BYTES} bytes",
                    code="field_too_large",
                )

        def on_part_end() -> None:
            part = state.part
            if part.is_file:
                state.file_done = True
            elif part.name is not None:
                state.fields[part.name] = part.value.decode("utf-8", "replace")

        def on_end() -> None:
            state.ended = True

        return {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
            "on_end": on_end,
        }

    def _charge(self, count: int) -> None:
        self._state.overhead += count
        if self._state.overhead > FORM_OVERHEAD_BYTES:
            raise InvalidRequest(
                "the form carries too much besides the file", code="form_too_large"
            )
