"""Content-type sniffers: libmagic when installed, puremagic (pure Python) otherwise."""

from __future__ import annotations

import codecs
from typing import Any

import anyio
import puremagic
import structlog

from filewallball.domain.models import ContentType
from filewallball.domain.ports import Sniffer

_TEXT_PLAIN = ContentType("text/plain")
_ZIP = "application/zip"
# Control characters that plain text does not contain (tab, newlines, form feed, escape and
# backspace do occur): a NUL-filled buffer is valid UTF-8 but not text.
_BINARY_CONTROLS = frozenset(chr(c) for c in range(32)) - set("\t\n\v\f\r\b\x1b")


def _normalise(answer: str | None) -> ContentType:
    """`answer` as a ContentType; unknown, empty (libmagic's x-empty) or invalid → octet-stream."""
    if not answer or answer == "application/x-empty":
        return ContentType.OCTET_STREAM
    try:
        return ContentType(answer)
    except ValueError:
        return ContentType.OCTET_STREAM


class LibmagicSniffer(Sniffer):
    """libmagic's MIME answer (python-magic); raises at construction when libmagic is unusable."""

    def __init__(self) -> None:
        # Imported here: python-magic raises ImportError at import when libmagic is missing.
        import magic

        self._magic: Any = magic.Magic(mime=True)
        self._errors: tuple[type[Exception], ...] = (magic.MagicException,)
        # One answer up front, so a library without a usable database fails here, not per upload.
        self._magic.from_buffer(b"probe")

    async def sniff(self, head: bytes) -> ContentType:
        if not head:
            return ContentType.OCTET_STREAM
        try:
            # In a thread: libmagic takes milliseconds on text and unknown binary (it tries
            # every rule), and ctypes lets go of the GIL meanwhile, so the loop keeps serving.
            answer = await anyio.to_thread.run_sync(self._magic.from_buffer, head)
        except self._errors:
            return ContentType.OCTET_STREAM
        return _normalise(answer)


class PuremagicSniffer(Sniffer):
    """puremagic's signatures, then UTF-8 text → text/plain; everything else is binary."""

    async def sniff(self, head: bytes) -> ContentType:
        if not head:
            return ContentType.OCTET_STREAM
        answer = _puremagic_type(head)
        if answer is not None:
            return _normalise(answer)
        return _TEXT_PLAIN if _looks_like_text(head) else ContentType.OCTET_STREAM


def _puremagic_type(head: bytes) -> str | None:
    try:
        matches = puremagic.magic_string(head)
    except (puremagic.PureError, ValueError):
        return None
    if not matches:
        return None
    best = max(match.confidence for match in matches)
    types: list[str] = [m.mime_type for m in matches if m.confidence == best and m.mime_type]
    # A ZIP's first bytes match docx, xlsx, jar, odt... equally, and puremagic would pick the
    # first of them: only "a ZIP" is sure. Other ties keep puremagic's order (%PDF: pdf, then fdf).
    if _ZIP in types:
        return _ZIP
    return types[0] if types else None


def _looks_like_text(head: bytes) -> bool:
    try:
        # Not final: the head may cut a multi-byte character at its end.
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return not _BINARY_CONTROLS.intersection(text)


def default_sniffer() -> Sniffer:
    """libmagic when it loads and answers, else puremagic."""
    try:
        return LibmagicSniffer()
    except Exception as error:  # a missing library or magic database: fall back, but say so
        structlog.get_logger().warning("sniffer_fallback", sniffer="puremagic", error=repr(error))
        return PuremagicSniffer()
