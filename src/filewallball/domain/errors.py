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

    def __init__(self, dependency: str, detail: str | None = None) -> None:
        super().__init__(detail or f"{dependency} is unavailable")
        self.dependency = dependency
