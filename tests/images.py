"""Test images, made with pyvips when a test asks for them: nothing binary is committed."""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from typing import Any

import pyvips  # type: ignore[import-untyped]

RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)
XMP = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"/></x:xmpmeta>'


def solid(width: int, height: int, colour: Sequence[int]) -> Any:
    """An 8-bit sRGB image of one colour."""
    return (
        (pyvips.Image.black(width, height) + list(colour)).cast("uchar").copy(interpretation="srgb")
    )


def picture(width: int = 640, height: int = 480) -> Any:
    """An 8-bit sRGB image with detail: red grows across, green grows down."""
    xyz = pyvips.Image.xyz(width, height)
    red = xyz[0] * (255 / width)
    green = xyz[1] * (255 / height)
    return red.bandjoin([green, red * 0 + 128]).cast("uchar").copy(interpretation="srgb")


def png(width: int = 640, height: int = 480) -> bytes:
    return bytes(picture(width, height).pngsave_buffer())


def png_half_transparent(width: int = 400, height: int = 300) -> bytes:
    """RGBA: the left half transparent black, the right half opaque red."""
    opaque = pyvips.Image.xyz(width, height)[0] >= width // 2  # 255 where true, else 0
    colour = solid(width, height, RED) & opaque  # transparent pixels are black underneath
    return bytes(colour.bandjoin(opaque).copy(interpretation="srgb").pngsave_buffer())


def jpeg(width: int = 640, height: int = 480) -> bytes:
    return bytes(picture(width, height).jpegsave_buffer(Q=90))


def jpeg_oriented(orientation: int = 6) -> bytes:
    """A 400x200 JPEG whose EXIF says to turn it (6: a quarter turn clockwise to be upright)."""
    image = picture(400, 200)
    image.set_type(pyvips.GValue.gint_type, "orientation", orientation)
    return bytes(image.jpegsave_buffer())


def jpeg_with_metadata() -> bytes:
    """A JPEG carrying a description, GPS coordinates and XMP: what a thumbnail must drop."""
    image = picture(400, 300)
    image.set_type(pyvips.GValue.gstr_type, "exif-ifd0-ImageDescription", "secret place")
    image.set_type(pyvips.GValue.gstr_type, "exif-ifd3-GPSLatitudeRef", "N")
    image.set_type(pyvips.GValue.gstr_type, "exif-ifd3-GPSLatitude", "51/1 30/1 0/1")
    image.set_type(pyvips.GValue.blob_type, "xmp-data", XMP)
    return bytes(image.jpegsave_buffer())


def jpeg_cmyk(colour: Sequence[int] = RED) -> bytes:
    """A 4-band CMYK JPEG without an ICC profile (the harder case: libvips must assume one)."""
    cmyk = solid(400, 300, colour).colourspace("cmyk")
    return bytes(cmyk.jpegsave_buffer(keep=pyvips.enums.ForeignKeep.NONE))


def png_16bit() -> bytes:
    image = (picture(400, 300).cast("ushort") * 257).cast("ushort").copy(interpretation="rgb16")
    return bytes(image.pngsave_buffer())


def _animation(frames: Sequence[Sequence[int]], width: int, height: int) -> Any:
    """Frames of one colour each, stacked as libvips holds pages."""
    pages = [solid(width, height, colour) for colour in frames]
    image = pyvips.Image.arrayjoin(pages, across=1).copy(interpretation="srgb")
    image.set_type(pyvips.GValue.gint_type, "page-height", height)
    image.set_type(pyvips.GValue.array_int_type, "delay", [100] * len(frames))
    image.set_type(pyvips.GValue.gint_type, "loop", 0)
    return image


def gif_animated(frames: Sequence[Sequence[int]] = (RED, GREEN, BLUE)) -> bytes:
    """A 300x200 animated GIF, one colour per frame."""
    return bytes(_animation(frames, 300, 200).gifsave_buffer())


def webp(width: int = 640, height: int = 480) -> bytes:
    return bytes(picture(width, height).webpsave_buffer(Q=90))


def avif(width: int = 640, height: int = 480) -> bytes:
    return bytes(picture(width, height).heifsave_buffer(compression="av1", Q=70, effort=0))


def tiff(width: int = 640, height: int = 480) -> bytes:
    return bytes(picture(width, height).tiffsave_buffer(tile=True, compression="deflate"))


def webp_animated(frames: Sequence[Sequence[int]] = (RED, GREEN, BLUE)) -> bytes:
    """A 300x200 animated WebP, one colour per frame."""
    return bytes(_animation(frames, 300, 200).webpsave_buffer(lossless=True))


def truncated(data: bytes) -> bytes:
    """The first half: what a cut-off upload leaves."""
    return data[: len(data) // 2]


@functools.cache
def png_pixel_flood() -> bytes:
    """A real 30000x30000 PNG (9e8 pixels) of about 110 KB: one bit per pixel, all zeros.

    It takes about a second to make, hence the cache; decoding it would fill 900 MB.
    """
    return bytes(pyvips.Image.black(30000, 30000).pngsave_buffer(compression=9, bitdepth=1))


def svg() -> bytes:
    return b'<svg xmlns="http://www.w3.org/2000/svg" width="100" height="100"><rect width="100" height="100" fill="red"/></svg>'


def random_bytes(size: int = 4096) -> bytes:
    return random.Random(4).randbytes(size)


def text_named_png() -> bytes:
    """What `notes.txt` renamed `notes.png` holds."""
    return b"These are my notes, not a picture.\n" * 50


@functools.cache
def webp_noise(side: int = 6000) -> bytes:
    """A grey-noise WebP whose single decode call takes over a second (about 16 MB).

    Noise is what makes a WebP slow to decode, and slow to make: about five seconds, hence
    the cache.
    """
    noise = pyvips.Image.gaussnoise(side, side, sigma=60, mean=128).cast("uchar")
    return bytes(noise.copy(interpretation="b-w").webpsave_buffer(Q=60, effort=0))


@functools.cache
def webp_large(side: int = 7000) -> bytes:
    """A smooth WebP of a few hundred KB that decodes into side x side x 4 bytes (190 MB)."""
    return bytes(picture(side, side).webpsave_buffer(Q=50, effort=0))
