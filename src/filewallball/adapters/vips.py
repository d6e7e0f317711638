"""Thumbnails of untrusted images with libvips (pyvips): the engine inside the renderer's children.

Written against pyvips 3.2 with the pyvips-binary libvips 8.18, whose behaviour shapes it:

- `thumbnail`'s own `fail_on` argument does not reach the loader there (half a JPEG still
  renders), so `fail_on=error` goes in the loader's option string, which does.
- `set_kill` from an `eval` handler is only seen between the pieces a sink asks for, and the
  first piece of a thumbnail can be half the source decoded. So the source is also handed
  to libvips through a reader that gives nothing more once the time is up: the streaming
  decoders (JPEG, PNG, TIFF) stop at their next read.
- WebP and HEIF/AVIF read the whole source first, then decode a frame in one call that
  neither stops (36 Mpx of noise: WebP 1.4 s, AVIF 2.5 s): the pool's parent kills the
  child process that runs them once the time is up.
"""

from __future__ import annotations

import time
from typing import Any

import pyvips  # type: ignore[import-untyped]

from filewallball.domain.errors import ThumbnailFailed, ThumbnailTimedOut
from filewallball.domain.models import ImageFormat

# Loaders for the raster formats people upload. block_untrusted already keeps out the
# risky ones (ImageMagick, matio, ...); this also keeps out SVG, a document, not a picture.
LOADERS = ("jpegload", "uhdrload", "pngload", "webpload", "gifload", "heifload", "tiffload")
LOAD_OPTIONS = "fail_on=error"
KEEP_NO_METADATA = pyvips.enums.ForeignKeep.NONE


class _Deadline:
    """The time limit that libvips' callbacks check; `hit` once one of them found it passed."""

    def __init__(self, seconds: float) -> None:
        self._at = time.monotonic() + seconds
        self.hit = False

    def passed(self) -> bool:
        if not self.hit and time.monotonic() >= self._at:
            self.hit = True
        return self.hit

    def kill_if_passed(self, image: Any, _progress: Any) -> None:
        if self.passed():
            image.set_kill(True)


class _DeadlineSource:
    """The bytes as a libvips source that reads as ended once the deadline has passed."""

    def __init__(self, data: bytes, deadline: _Deadline) -> None:
        self._view = memoryview(data)
        self._position = 0
        self._deadline = deadline
        self.source = pyvips.SourceCustom()
        self.source.on_read(self._read)
        self.source.on_seek(self._seek)

    def _read(self, size: int) -> memoryview | None:
        if self._deadline.passed():
            return None
        chunk = self._view[self._position : self._position + size]
        self._position += len(chunk)
        return chunk

    def _seek(self, offset: int, whence: int) -> int:
        position = (0, self._position, len(self._view))[whence] + offset
        if not 0 <= position <= len(self._view):
            return -1  # libvips' HEIF reader probes the size by seeking past the end
        self._position = position
        return position


class VipsThumbnailer:
    """Shrink-on-load thumbnails: upright, 8-bit sRGB, first frame, no metadata, bounded.

    Synchronous, and it trusts its process to libvips: it runs inside the renderer's child
    processes (adapters/thumbnail_pool.py), which bound its time and memory from outside.
    """

    def __init__(self, *, max_pixels: int, timeout_seconds: float) -> None:
        self._max_pixels = max_pixels
        self._timeout_seconds = timeout_seconds
        # Process-wide, and this is libvips' only user in its process. The operation cache
        # would keep untrusted sources alive for repeats that never come (thumbnails are stored).
        pyvips.block_untrusted_set(True)
        pyvips.cache_set_max(0)

    def render(self, source: bytes, *, longest_side: int, format: ImageFormat) -> bytes:
        """The thumbnail, or ThumbnailFailed (not an image, too many pixels, corrupt, too slow)."""
        deadline = _Deadline(self._timeout_seconds)
        try:
            self._check_header(source)
            # `reader` outlives the image built on it: libvips calls back into it until the
            # thumbnail is encoded, and a callback into a collected object crashes.
            reader = _DeadlineSource(source, deadline)
            data = _thumbnail(reader.source, longest_side, format, deadline)
        except pyvips.Error as error:
            if deadline.hit:
                raise self._too_slow() from error
            raise ThumbnailFailed(f"the image cannot be read: {_reason(error)}") from error
        if deadline.hit:  # a decoder that was cut short may still have finished its picture
            raise self._too_slow()
        return data

    def _check_header(self, source: bytes) -> None:
        """Refuse unknown formats and pixel floods from the header, before decoding any pixel."""
        header = pyvips.Image.new_from_buffer(source, "", access="sequential")
        loader = str(header.get("vips-loader")).removesuffix("_buffer")
        if loader not in LOADERS:
            raise ThumbnailFailed(f"images read by {loader} get no thumbnail")
        pixels = header.width * header.height * header.get_n_pages()
        if pixels > self._max_pixels:
            raise ThumbnailFailed(
                f"too many pixels: {header.width}x{header.height}x{header.get_n_pages()}"
                f" is more than {self._max_pixels}"
            )

    def _too_slow(self) -> ThumbnailTimedOut:
        return ThumbnailTimedOut(f"rendering took longer than {self._timeout_seconds} seconds")


def _thumbnail(source: Any, longest_side: int, format: ImageFormat, deadline: _Deadline) -> bytes:
    # thumbnail shrinks while it decodes (JPEG, WebP, HEIF, ...), turns the image upright
    # from its EXIF orientation, loads page 0 only, and exports CMYK and 16-bit to 8-bit sRGB.
    image = pyvips.Image.thumbnail_source(
        source, longest_side, height=longest_side, size="down", option_string=LOAD_OPTIONS
    )
    if image.interpretation not in ("srgb", "b-w") or image.format != "uchar":
        image = image.colourspace("srgb").cast("uchar")  # whatever thumbnail left unexported
    if format is ImageFormat.JPEG and image.hasalpha():
        image = image.flatten(background=[255] * (image.bands - 1))
    image.set_progress(True)
    image.signal_connect("eval", deadline.kill_if_passed)
    return _encode(image, format)


def _encode(image: Any, format: ImageFormat) -> bytes:
    """The encoded bytes, without EXIF (GPS), XMP, IPTC or ICC metadata."""
    if format is ImageFormat.WEBP:
        data = image.webpsave_buffer(Q=80, keep=KEEP_NO_METADATA)
    elif format is ImageFormat.AVIF:
        # AVIF encoding runs in one call that cannot be killed: effort 2 keeps it short.
        data = image.heifsave_buffer(
            compression="av1", Q=50, effort=2, bitdepth=8, keep=KEEP_NO_METADATA
        )
    else:
        data = image.jpegsave_buffer(
            Q=82, interlace=True, optimize_coding=True, keep=KEEP_NO_METADATA
        )
    return bytes(data)


def _reason(error: pyvips.Error) -> str:
    """libvips' first complaint, which names the problem (`premature end of JPEG image`)."""
    lines = [line.strip() for line in str(error.detail or "").splitlines() if line.strip()]
    return lines[0] if lines else str(error.message)


def is_out_of_memory(error: ThumbnailFailed) -> bool:
    """Whether libvips gave up for want of memory (`vips_malloc: out of memory`, ...)."""
    detail = error.detail.lower()
    return "out of memory" in detail or "memory allocation" in detail
