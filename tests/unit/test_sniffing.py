"""Sniffers on real bytes made here: what libmagic and puremagic call them."""

from __future__ import annotations

import io
import json
import random
import struct
import sys
import zipfile
import zlib

import pytest

from filewallball.adapters.sniffing import LibmagicSniffer, PuremagicSniffer, default_sniffer
from filewallball.domain.models import ContentType


def png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\x00\x00")
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def jpeg() -> bytes:
    app0 = b"\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    return b"\xff\xd8" + app0 + b"\x00" * 64 + b"\xff\xd9"


def gif() -> bytes:
    return (
        b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff"
        b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
    )


def pdf() -> bytes:
    return b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n"


def zip_archive(*names: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in names or ("hello.txt",):
            archive.writestr(name, "hello")
    return buffer.getvalue()


UTF8_TEXT = "Grüße aus Köln. 世界 says hello. Ελληνικά γράμματα.\n".encode()
LATIN1_TEXT = "Grüße aus Köln. Ça va très bien.\n".encode("latin-1")
JSON = json.dumps({"name": "Grüße", "sizes": [1, 2, 3]}).encode()
SVG = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b'<svg xmlns="http://www.w3.org/2000/svg" width="1" height="1"><rect width="1"/></svg>\n'
)
HTML = b"<!DOCTYPE html>\n<html><head><title>t</title></head><body><p>hi</p></body></html>\n"
RANDOM = random.Random(20260101).randbytes(4096)

LIBMAGIC_CASES = [
    ("png", png(), "image/png"),
    ("jpeg", jpeg(), "image/jpeg"),
    ("gif", gif(), "image/gif"),
    ("pdf", pdf(), "application/pdf"),
    ("zip", zip_archive(), "application/zip"),
    ("utf-8 text", UTF8_TEXT, "text/plain"),
    ("latin-1 text", LATIN1_TEXT, "text/plain"),
    ("json", JSON, "application/json"),
    ("svg", SVG, "image/svg+xml"),
    ("html", HTML, "text/html"),
    ("random binary", RANDOM, "application/octet-stream"),
    ("empty", b"", "application/octet-stream"),
]

PUREMAGIC_CASES = [
    ("png", png(), "image/png"),
    ("jpeg", jpeg(), "image/jpeg"),
    ("gif", gif(), "image/gif"),
    ("pdf", pdf(), "application/pdf"),
    # Its first bytes fit docx, jar, odt... as well: only "a ZIP" is certain.
    ("zip", zip_archive(), "application/zip"),
    ("docx-like zip", zip_archive("[Content_Types].xml", "word/document.xml"), "application/zip"),
    ("utf-8 text", UTF8_TEXT, "text/plain"),
    ("utf-8 cut mid-character", UTF8_TEXT + "世".encode()[:2], "text/plain"),
    ("latin-1 text", LATIN1_TEXT, "application/octet-stream"),
    ("json", JSON, "application/json"),
    ("svg", SVG, "image/svg+xml"),
    ("html", HTML, "text/html"),
    ("random binary", RANDOM, "application/octet-stream"),
    ("NUL bytes", b"\x00" * 100, "application/octet-stream"),
    ("empty", b"", "application/octet-stream"),
]


@pytest.fixture(scope="module")
def libmagic() -> LibmagicSniffer:
    try:
        return LibmagicSniffer()
    except Exception as error:
        pytest.skip(reason=f"libmagic is not usable here: {error!r}")


@pytest.mark.parametrize(
    ("head", "expected"), [case[1:] for case in LIBMAGIC_CASES], ids=[c[0] for c in LIBMAGIC_CASES]
)
async def test_libmagic(libmagic: LibmagicSniffer, head: bytes, expected: str) -> None:
    answer = await libmagic.sniff(head)
    assert isinstance(answer, ContentType)
    assert answer == expected


@pytest.mark.parametrize(
    ("head", "expected"),
    [case[1:] for case in PUREMAGIC_CASES],
    ids=[c[0] for c in PUREMAGIC_CASES],
)
async def test_puremagic(head: bytes, expected: str) -> None:
    answer = await PuremagicSniffer().sniff(head)
    assert isinstance(answer, ContentType)
    assert answer == expected


def test_default_is_libmagic_when_usable(libmagic: LibmagicSniffer) -> None:
    assert isinstance(default_sniffer(), LibmagicSniffer)


def test_default_falls_back_to_puremagic(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes `import magic` raise ImportError, as without libmagic.
    monkeypatch.setitem(sys.modules, "magic", None)
    assert isinstance(default_sniffer(), PuremagicSniffer)
