from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import pytest

from filewallball.adapters.caching import CachedFileRepository
from filewallball.adapters.charsets import NormalizerCharsetDecoder
from filewallball.adapters.clamd import NoScanner
from filewallball.domain.access import Auditor
from filewallball.domain.errors import (
    AccessDenied,
    DependencyUnavailable,
    DigestMismatch,
    FileNotFound,
    FileTooLarge,
    MalwareDetected,
    NotPreviewable,
    QuotaExceeded,
    TypeNotAllowed,
)
from filewallball.domain.models import (
    FileRecord,
    ListQuery,
    ScanStatus,
    Sha256,
    SortKey,
    TypePolicy,
    Visibility,
)
from filewallball.domain.ports import BlobReader, MalwareScanner, ScanResult, ScanVerdict
from filewallball.domain.security import Principal, Role
from filewallball.domain.services import FileService
from filewallball.domain.uploads import SNIFF_BYTES, Uploader, UploadLimits, UploadRequest
from tests.fakes import (
    FakeAuditLog,
    FakeBlobStore,
    FakeCache,
    FakeClock,
    FakeFileRepository,
    FakeSniffer,
    FakeTaskQueue,
    FakeUsageRepository,
    stream,
)

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 100


async def _open(
    service: FileService, principal: Principal, raw_id: str
) -> tuple[FileRecord, BlobReader]:
    """What a download does: the record, then its bytes (reads go on after a delete)."""
    record = await service.get(principal, raw_id)
    reader = await service.open_record(principal, record)
    await service.downloaded(principal, record, sent=record.size, length=record.size)
    return record, reader


@pytest.fixture
def files() -> FakeFileRepository:
    return FakeFileRepository()


@pytest.fixture
def blobs() -> FakeBlobStore:
    return FakeBlobStore()


ADMIN = Principal.system("admin")


def principal(role: Role, owner: str, **quota: int) -> Principal:
    return Principal(
        key_id=f"key-{owner}-{role}",
        name=f"{owner}-{role}",
        role=role,
        owner=owner,
        permissions=role.permissions,
        **quota,  # type: ignore[arg-type]
    )


ALICE = principal(Role.UPLOADER, "alice")
ALICE_READER = principal(Role.READER, "alice")
BOB = principal(Role.UPLOADER, "bob")


def make_service(
    files: FakeFileRepository,
    blobs: FakeBlobStore,
    *,
    max_upload_bytes: int = 1000,
    preview_max_bytes: int = 10,
    policy: TypePolicy | None = None,
    cache: FakeCache | None = None,
    audit: FakeAuditLog | None = None,
    scanner: MalwareScanner | None = None,
    fail_open: bool = False,
    jobs: FakeTaskQueue | None = None,
) -> FileService:
    clock = FakeClock()
    repository = files if cache is None else CachedFileRepository(files, cache=cache)
    usage = FakeUsageRepository(files)
    auditor = Auditor(log=audit or FakeAuditLog(), clock=clock)
    limits = UploadLimits(
        max_upload_bytes=max_upload_bytes,
        preview_max_bytes=preview_max_bytes,
        type_policy=policy or TypePolicy(),
        scan_fail_open=fail_open,
    )
    uploader = Uploader(
        files=repository,
        blobs=blobs,
        sniffer=FakeSniffer(),
        clock=clock,
        usage=usage,
        scanner=scanner or NoScanner(),
        auditor=auditor,
        limits=limits,
        jobs=jobs or FakeTaskQueue(),
    )
    return FileService(
        files=repository,
        blobs=blobs,
        clock=clock,
        usage=usage,
        auditor=auditor,
        limits=limits,
        charsets=NormalizerCharsetDecoder(),
        uploader=uploader,
    )


@pytest.fixture
def service(files: FakeFileRepository, blobs: FakeBlobStore) -> FileService:
    return make_service(files, blobs)


def upload(data: bytes, name: str = "a.txt", **kwargs: object) -> UploadRequest:
    return UploadRequest(filename=name, chunks=stream(data, 7), **kwargs)  # type: ignore[arg-type]


async def test_upload_stores_bytes_and_record(
    service: FileService, files: FakeFileRepository, blobs: FakeBlobStore
) -> None:
    record = await service.upload(ADMIN, upload(b"hello world", "../greeting.txt"))
    assert record.size == 11
    assert record.sha256 == hashlib.sha256(b"hello world").hexdigest()
    assert record.filename == ".._greeting.txt"
    assert record.content_type == "text/plain"
    assert record.visibility is Visibility.PRIVATE
    assert blobs.blobs[record.sha256] == b"hello world"
    assert files.records[record.id] == record
    assert await service.get(ADMIN, record.id) == record


async def test_upload_sniffs_type_from_bytes_not_name(service: FileService) -> None:
    record = await service.upload(ADMIN, upload(PNG, "notes.txt"))
    assert record.content_type == "image/png"
    assert not record.previewable


async def test_exact_limit_is_accepted_and_one_byte_over_is_rejected(
    files: FakeFileRepository, blobs: FakeBlobStore
) -> None:
    service = make_service(files, blobs, max_upload_bytes=100)
    record = await service.upload(ADMIN, upload(b"x" * 100))
    assert record.size == 100
    with pytest.raises(FileTooLarge):
        await service.upload(ADMIN, upload(b"x" * 101))
    assert list(files.records) == [record.id]
    assert not blobs.staged


async def test_too_large_stops_reading_at_the_limit(
    files: FakeFileRepository, blobs: FakeBlobStore
) -> None:
    read = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal read
        while True:
            read += 10
            yield b"x" * 10

    service = make_service(files, blobs, max_upload_bytes=100)
    with pytest.raises(FileTooLarge):
        await service.upload(ADMIN, UploadRequest(filename="big", chunks=endless()))
    assert read == 110


async def test_declared_size_over_limit_fails_before_reading(
    files: FakeFileRepository, blobs: FakeBlobStore
) -> None:
    service = make_service(files, blobs, max_upload_bytes=100)

    async def never() -> AsyncIterator[bytes]:
        raise AssertionError("the body must not be read")
        yield b""

    with pytest.raises(FileTooLarge):
        await service.upload(ADMIN, UploadRequest(filename="x", chunks=never(), declared_size=101))


async def test_empty_file_is_a_file(service: FileService, blobs: FakeBlobStore) -> None:
    record = await service.upload(ADMIN, upload(b""))
    assert record.size == 0
    assert record.sha256 == hashlib.sha256(b"").hexdigest()
    assert record.content_type == "text/plain"
    assert blobs.blobs[record.sha256] == b""


async def test_digest_mismatch_stores_nothing(
    service: FileService, files: FakeFileRepository, blobs: FakeBlobStore
) -> None:
    with pytest.raises(DigestMismatch):
        await service.upload(ADMIN, upload(b"abc", expected_sha256=Sha256("0" * 64)))
    assert not files.records and not blobs.blobs and not blobs.staged
    good = Sha256(hashlib.sha256(b"abc").hexdigest())
    assert (await service.upload(ADMIN, upload(b"abc", expected_sha256=good))).sha256 == good


async def test_denied_type_is_rejected_while_streaming(
    files: FakeFileRepository, blobs: FakeBlobStore
) -> None:
    service = make_service(
        files, blobs, max_upload_bytes=10 * SNIFF_BYTES, policy=TypePolicy(denied=("image/*",))
    )
    consumed = 0

    async def big_png() -> AsyncIterator[bytes]:
        nonlocal consumed
        data = PNG + b"\x00" * (4 * SNIFF_BYTES)
        for offset in range(0, len(data), 4096):
            consumed = offset + 4096
            yield data[offset : offset + 4096]

    with pytest.raises(TypeNotAllowed):
        await service.upload(ADMIN, UploadRequest(filename="a.png", chunks=big_png()))
    assert consumed <= SNIFF_BYTES + 4096  # decided on the head, not after the whole body
    assert not files.records and not blobs.blobs


async def test_allow_list(files: FakeFileRepository, blobs: FakeBlobStore) -> None:
    service = make_service(files, blobs, policy=TypePolicy(allowed=("image/*",)))
    assert (await service.upload(ADMIN, upload(PNG))).content_type == "image/png"
    with pytest.raises(TypeNotAllowed):
        await service.upload(ADMIN, upload(b"text"))


async def test_same_content_is_stored_once_and_kept_until_the_last_delete(
    service: FileService, blobs: FakeBlobStore
) -> None:
    first, second = await asyncio.gather(
        service.upload(ADMIN, upload(b"same bytes", "one")),
        service.upload(ADMIN, upload(b"same bytes", "two")),
    )
    assert first.id != second.id and first.sha256 == second.sha256
    assert len(blobs.blobs) == 1
    await service.delete(ADMIN, first.id)
    assert first.sha256 in blobs.blobs
    with pytest.raises(FileNotFound):
        await service.get(ADMIN, first.id)
    assert (await service.get(ADMIN, second.id)).filename == "two"
    await service.delete(ADMIN, second.id)
    assert not blobs.blobs


async def test_delete_wins_over_a_cached_record(
    files: FakeFileRepository, blobs: FakeBlobStore
) -> None:
    cache = FakeCache()
    service = make_service(files, blobs, cache=cache)
    record = await service.upload(ADMIN, upload(b"cached"))
    await service.get(ADMIN, record.id)  # fills the cache
    await service.delete(ADMIN, record.id)
    with pytest.raises(FileNotFound):
        await service.get(ADMIN, record.id)
    with pytest.raises(FileNotFound):
        await service.delete(ADMIN, record.id)
    with pytest.raises(FileNotFound):
        await _open(service, ADMIN, record.id)


async def test_get_reads_through_the_cache(files: FakeFileRepository, blobs: FakeBlobStore) -> None:
    service = make_service(files, blobs, cache=FakeCache())
    record = await service.upload(ADMIN, upload(b"abc"))
    await service.get(ADMIN, record.id)
    files.records.clear()  # the cache alone answers now
    assert await service.get(ADMIN, record.id) == record


@pytest.mark.parametrize("raw_id", ["nope", "../../etc/passwd", "A" * 22, ""])
async def test_unknown_ids_are_not_found(service: FileService, raw_id: str) -> None:
    with pytest.raises(FileNotFound):
        await service.get(ADMIN, raw_id)
    with pytest.raises(FileNotFound):
        await service.delete(ADMIN, raw_id)


async def test_open_reads_ranges_and_survives_delete(service: FileService) -> None:
    record = await service.upload(ADMIN, upload(b"0123456789"))
    _, reader = await _open(service, ADMIN, record.id)
    await service.delete(ADMIN, record.id)
    assert b"".join([c async for c in reader.chunks(2, 5)]) == b"23456"
    await reader.close()


async def test_preview_caps_and_keeps_characters_whole(service: FileService) -> None:
    record = await service.upload(ADMIN, upload("aaaaaaaaaé-and-more".encode()))  # é is bytes 9..10
    preview = await service.preview(ADMIN, record.id)
    assert preview.truncated
    assert preview.text == "a" * 9
    short = await service.upload(ADMIN, upload(b"short"))
    assert (await service.preview(ADMIN, short.id)).text == "short"
    assert not (await service.preview(ADMIN, short.id)).truncated


async def test_preview_of_binary_is_refused(service: FileService) -> None:
    record = await service.upload(ADMIN, upload(PNG))
    with pytest.raises(NotPreviewable):
        await service.preview(ADMIN, record.id)


async def test_list_sorts_filters_and_pages(service: FileService) -> None:
    names = ["b.txt", "a.txt", "c.png"]
    for name in names:
        await service.upload(ADMIN, upload(PNG if name.endswith("png") else name.encode(), name))
    page = await service.list(ADMIN, ListQuery(sort=SortKey.FILENAME, limit=2))
    assert [r.filename for r in page.items] == ["a.txt", "b.txt"]
    assert page.next_cursor is not None
    rest = await service.list(
        ADMIN, ListQuery(sort=SortKey.FILENAME, limit=2, cursor=page.next_cursor)
    )
    assert [r.filename for r in rest.items] == ["c.png"] and rest.next_cursor is None
    images = await service.list(ADMIN, ListQuery(content_type="image/*"))
    assert [r.filename for r in images.items] == ["c.png"]
    newest = await service.list(ADMIN, ListQuery())
    assert [r.filename for r in newest.items] == ["c.png", "a.txt", "b.txt"]


async def test_recover_collects_unreferenced_blobs(
    service: FileService, files: FakeFileRepository, blobs: FakeBlobStore
) -> None:
    record = await service.upload(ADMIN, upload(b"orphan"))
    # A crash after the record was removed but before its blob was collected:
    await files.remove(record.id)
    assert record.sha256 in blobs.blobs
    assert await service.recover(temp_older_than_seconds=60) == (0, 1)
    assert record.sha256 not in blobs.blobs


async def test_uploads_belong_to_the_callers_owner(service: FileService) -> None:
    record = await service.upload(ALICE, upload(b"mine"))
    assert record.owner == "alice"
    assert await service.get(ALICE_READER, record.id) == record  # same owner, reader key


async def test_readers_cannot_upload_or_delete(service: FileService) -> None:
    with pytest.raises(AccessDenied):
        await service.upload(ALICE_READER, upload(b"x"))
    record = await service.upload(ALICE, upload(b"x"))
    with pytest.raises(AccessDenied):
        await service.delete(ALICE_READER, record.id)


async def test_private_files_of_others_do_not_exist(service: FileService) -> None:
    private = await service.upload(ALICE, upload(b"secret"))
    public = await service.upload(ALICE, upload(b"shared", visibility=Visibility.PUBLIC))
    for action in (service.get, service.preview, service.delete):
        with pytest.raises(FileNotFound):
            await action(BOB, private.id)
    with pytest.raises(FileNotFound):
        await _open(service, BOB, private.id)
    assert (await service.get(BOB, public.id)).id == public.id
    with pytest.raises(AccessDenied):
        await service.delete(BOB, public.id)
    bob_sees = await service.list(BOB, ListQuery())
    assert [r.id for r in bob_sees.items] == [public.id]
    assert {r.id for r in (await service.list(ADMIN, ListQuery())).items} == {private.id, public.id}
    await service.delete(ADMIN, private.id)


async def test_audit_entries_for_changes_reads_and_refusals(
    files: FakeFileRepository, blobs: FakeBlobStore
) -> None:
    audit = FakeAuditLog()
    service = make_service(files, blobs, audit=audit, max_upload_bytes=5)
    record = await service.upload(ALICE, upload(b"abc"))
    _, reader = await _open(service, ALICE, record.id)
    await reader.close()
    await service.preview(ALICE, record.id)
    with pytest.raises(FileNotFound):
        await service.get(BOB, record.id)
    with pytest.raises(FileTooLarge):
        await service.upload(ALICE, upload(b"too long"))
    await service.delete(ALICE, record.id)
    seen = [(e.action, e.outcome.value, e.actor, e.detail) for e in audit.entries]
    assert seen == [
        ("file.upload", "success", "alice-uploader", None),
        ("file.download", "success", "alice-uploader", None),
        ("file.view", "success", "alice-uploader", None),
        ("file.read", "denied", "bob-uploader", None),
        ("file.upload", "failed", "alice-uploader", "file_too_large"),
        ("file.delete", "success", "alice-uploader", None),
    ]
    assert all(
        e.target == record.id
        for e in audit.entries
        if e.action != "file.upload" or e.outcome.value == "success"
    )


async def test_quotas_count_logical_files(files: FakeFileRepository, blobs: FakeBlobStore) -> None:
    service = make_service(files, blobs)
    small = principal(Role.UPLOADER, "carol", quota_bytes=10, quota_files=2)
    await service.upload(small, upload(b"x" * 6))
    with pytest.raises(QuotaExceeded):
        await service.upload(small, upload(b"x" * 5))  # 11 > 10, while streaming
    with pytest.raises(QuotaExceeded):
        await service.upload(small, upload(b"x" * 5, declared_size=5))  # before reading
    await service.upload(small, upload(b"x" * 4))  # exactly 10; deduplicated, still charged
    with pytest.raises(QuotaExceeded):
        await service.upload(small, upload(b""))  # the file count is reached
    assert len(blobs.blobs) == 2


class FakeScanner:
    """Finds 'EICAR' in the stream; can be down, or fail the scan."""

    def __init__(self, *, down: bool = False, error: bool = False) -> None:
        self.enabled = True
        self.down = down
        self.error = error
        self.fed = 0

    async def start(self) -> FakeScanSession:
        if self.down:
            raise DependencyUnavailable("clamd")
        return FakeScanSession(self)

    async def ping(self) -> None:
        return None


class FakeScanSession:
    def __init__(self, scanner: FakeScanner) -> None:
        self.scanner = scanner
        self.data = bytearray()

    async def feed(self, chunk: bytes) -> None:
        self.scanner.fed += len(chunk)
        self.data += chunk

    async def finish(self) -> ScanResult:
        if self.scanner.error:
            return ScanResult(ScanVerdict.ERROR, detail="size limit exceeded")
        if b"EICAR" in self.data:
            return ScanResult(ScanVerdict.INFECTED, signature="Eicar-Test-Signature")
        return ScanResult(ScanVerdict.CLEAN)

    async def abort(self) -> None:
        return None


async def test_malware_is_rejected_and_nothing_is_stored(
    files: FakeFileRepository, blobs: FakeBlobStore
) -> None:
    audit = FakeAuditLog()
    scanner = FakeScanner()
    service = make_service(files, blobs, audit=audit, scanner=scanner)  # type: ignore[arg-type]
    clean = await service.upload(ALICE, upload(b"harmless"))
    assert clean.scan_status is ScanStatus.CLEAN
    with pytest.raises(MalwareDetected):
        await service.upload(ALICE, upload(b"xx EICAR xx"))
    assert list(files.records) == [clean.id]
    assert len(blobs.blobs) == 1
    assert not blobs.staged
    assert ("malware.detected", "Eicar-Test-Signature") in [
        (e.action, e.detail) for e in audit.entries
    ]
    assert scanner.fed == len(b"harmless") + len(b"xx EICAR xx")


async def test_scanner_down_or_failing_fails_closed_unless_configured(
    files: FakeFileRepository, blobs: FakeBlobStore
) -> None:
    for scanner in (FakeScanner(down=True), FakeScanner(error=True)):
        closed = make_service(files, blobs, scanner=scanner)  # type: ignore[arg-type]
        with pytest.raises(DependencyUnavailable):
            await closed.upload(ALICE, upload(b"anything"))
        assert not files.records
        open_ = make_service(files, blobs, scanner=scanner, fail_open=True)  # type: ignore[arg-type]
        record = await open_.upload(ALICE, upload(b"anything"))
        assert record.scan_status is ScanStatus.UNSCANNED
        await open_.delete(ADMIN, record.id)


async def test_preview_transcodes_other_charsets_and_caps_lines(
    files: FakeFileRepository, blobs: FakeBlobStore
) -> None:
    service = make_service(files, blobs, preview_max_bytes=1000)
    latin = "Déjà vu à Zürich, naïve façade — ça coûte 5 €.\n" * 3
    record = await service.upload(ADMIN, upload(latin.encode("cp1252"), "notes.txt"))
    preview = await service.preview(ADMIN, record.id)
    assert preview.text == latin
    assert preview.charset in {"cp1252", "latin-1", "iso8859-15", "iso8859-1"}
    lines = await service.preview(ADMIN, record.id, max_lines=2)
    assert lines.text == "".join(latin.splitlines(keepends=True)[:2])
    assert lines.truncated


async def test_source_code_is_text_whatever_the_sniffer_says(
    files: FakeFileRepository, blobs: FakeBlobStore
) -> None:
    service = make_service(files, blobs, preview_max_bytes=1000)
    # The fake sniffer calls anything non-UTF-8 binary; the extension makes it previewable.
    code = "# Grüße\nprint('hi')\n".encode("cp1252")
    record = await service.upload(ADMIN, upload(code, "script.py"))
    assert record.content_type == "application/octet-stream"
    assert (await service.preview(ADMIN, record.id)).text.startswith("# Grüße")
    binary = await service.upload(ADMIN, upload(b"\x00\x01\x02binary", "data.log"))
    with pytest.raises(NotPreviewable):
        await service.preview(ADMIN, binary.id)


async def test_images_queue_a_thumbnail_job(
    files: FakeFileRepository, blobs: FakeBlobStore
) -> None:
    jobs = FakeTaskQueue()
    service = make_service(files, blobs, jobs=jobs)
    image = await service.upload(ADMIN, upload(PNG, "a.png"))
    assert image.thumbnail_status == "pending"
    text = await service.upload(ADMIN, upload(b"text"))
    assert text.thumbnail_status == "not_applicable"
    assert jobs.queued == [("thumbnail", image.id, {"file_id": image.id})]
