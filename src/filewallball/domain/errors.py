"""Domain errors: plain exceptions with a stable snake_case code; HTTP maps them to statuses."""

from __future__ import annotations


class FileWallBallError(Exception):
    """Base of every error the domain raises on purpose."""

    code = "error"

    def __init__(self, detail: str, *, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code


class InvalidRequest(FileWallBallError):
    """The request is malformed: a missing field, a bad cursor, a broken body."""

    code = "invalid_request"


class FileNotFound(FileWallBallError):
    """No such file, or one the caller may not see."""

    code = "file_not_found"


class ResourceNotFound(FileWallBallError):
    """An admin resource (an API key, an IP rule) that does not exist."""

    code = "not_found"


class ClientDisconnected(InvalidRequest):
    """The client went away before its request body was whole."""

    code = "client_disconnected"


class UploadNotFound(FileWallBallError):
    """No such resumable upload, or one of another owner."""

    code = "upload_not_found"


class UploadExpired(FileWallBallError):
    """The resumable upload passed its deadline before it was complete."""

    code = "upload_expired"


class OffsetMismatch(FileWallBallError):
    """The request continues a resumable upload from an offset it is not at."""

    code = "offset_mismatch"


class UploadLocked(FileWallBallError):
    """Another request is writing to the resumable upload now (maybe on another replica)."""

    code = "upload_locked"


class ChecksumMismatch(FileWallBallError):
    """The request's bytes do not match its Upload-Checksum; none of them were kept."""

    code = "checksum_mismatch"


class LengthExceeded(FileWallBallError):
    """The bytes sent pass the resumable upload's declared length."""

    code = "upload_length_exceeded"


class TooManyOpenUploads(FileWallBallError):
    """The owner has as many unfinished resumable uploads as it may."""

    code = "too_many_open_uploads"


class FileTooLarge(FileWallBallError):
    """The upload passed the configured byte limit."""

    code = "file_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(f"the file is larger than the limit of {limit} bytes")
        self.limit = limit


class TypeNotAllowed(FileWallBallError):
    """The sniffed content type is denied or not on the allow list."""

    code = "type_not_allowed"


class NotPreviewable(FileWallBallError):
    """The file has no text preview."""

    code = "not_previewable"


class DigestMismatch(FileWallBallError):
    """The bytes received do not match the digest the client declared."""

    code = "digest_mismatch"


class StorageFull(FileWallBallError):
    """The blob store has no room left."""

    code = "storage_full"


class DependencyUnavailable(FileWallBallError):
    """A backing service (database, cache, scanner) cannot be reached."""

    code = "dependency_unavailable"

    def __init__(
        self, dependency: str, detail: str | None = None, *, diagnosis: str | None = None
    ) -> None:
        super().__init__(detail or f"{dependency} is unavailable")
        self.dependency = dependency
        # For operators (logs, /readyz, the CLI), not clients: where it was sought and why it
        # failed, e.g. "database at db:5432: connection refused".
        self.diagnosis = diagnosis or self.detail


class Unauthenticated(FileWallBallError):
    """No API key, or one that is unknown, revoked or expired."""

    code = "unauthenticated"


class AccessDenied(FileWallBallError):
    """The caller's role or address may not do this."""

    code = "access_denied"


class RateLimited(FileWallBallError):
    """Too many requests in the current window."""

    code = "rate_limited"

    def __init__(self, detail: str, *, retry_after_seconds: int) -> None:
        super().__init__(detail)
        self.retry_after_seconds = retry_after_seconds


class QuotaExceeded(FileWallBallError):
    """The upload would take the owner past a stored-bytes or file-count quota."""

    code = "quota_exceeded"


class MalwareDetected(FileWallBallError):
    """The scanner found malware in the upload; nothing was stored."""

    code = "malware_detected"

    def __init__(self, signature: str) -> None:
        super().__init__(f"the file contains malware ({signature})")
        self.signature = signature


class Conflict(FileWallBallError):
    """The change conflicts with the current state (a duplicate name, a rule that exists)."""

    code = "conflict"


class PreconditionFailed(FileWallBallError):
    """The record is no longer the version the caller made its change for (If-Match)."""

    code = "precondition_failed"


class NotAnImage(FileWallBallError):
    """The file is not an image, so it has no thumbnail."""

    code = "not_an_image"


class ThumbnailFailed(FileWallBallError):
    """The image could not be rendered (corrupt, too many pixels, too slow)."""

    code = "thumbnail_failed"


class ThumbnailTimedOut(ThumbnailFailed):
    """This rendering took too long; the image is not broken for it (another size, or a later
    try on a quieter machine, may succeed), so the file is not marked failed."""
