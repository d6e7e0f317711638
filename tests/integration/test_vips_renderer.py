"""The thumbnail renderer against real libvips in its real child processes, on images made
at test time (tests/images.py). Its limits against hostile images: tests/hostile."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import psutil
import pytest
import pytest_asyncio
import pyvips  # type: ignore[import-untyped]

from filewallball.adapters import thumbnail_child
from filewallball.adapters.thumbnail_pool import CONCURRENCY, SubprocessThumbnailRenderer
from filewallball.domain.errors import ThumbnailFailed
from filewallball.domain.models import ImageFormat
from tests import images

# One event loop for the module, so that one renderer's children serve every test.
pytestmark = pytest.mark.asyncio(loop_scope="module")
LOADERS = {ImageFormat.WEBP: "webpload", ImageFormat.AVIF: "heifload", ImageFormat.JPEG: "jpegload"}
Renderers = Callable[..., SubprocessThumbnailRenderer]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def renderer() -> AsyncIterator[SubprocessThumbnailRenderer]:
    renderer = SubprocessThumbnailRenderer()
    yield renderer
    await renderer.aclose()


@pytest_asyncio.fixture(loop_scope="module")
async def make_renderer() -> AsyncIterator[Renderers]:
    """Renderers with other settings, closed after the test."""
    made: list[SubprocessThumbnailRenderer] = []

    def make(**settings: Any) -> SubprocessThumbnailRenderer:
        made.append(SubprocessThumbnailRenderer(**settings))
        return made[-1]

    yield make
    for renderer in made:
        await renderer.aclose()


def children(of: psutil.Process | None = None) -> list[psutil.Process]:
    """The renderer's live child processes (of this process unless told)."""
    found = []
    for child in (of or psutil.Process()).children():
        try:
            if thumbnail_child.__name__ in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:  # ended (a zombie until reaped): not a child that can render
            continue
    return found


def decode(data: bytes, format: ImageFormat) -> Any:
    """The thumbnail decoded again, after checking it is in the format asked for."""
    image = pyvips.Image.new_from_buffer(data, "")
    assert image.get("vips-loader").startswith(LOADERS[format])
    if format is ImageFormat.AVIF:
        assert image.get("heif-compression") == "av1"
    return image


def close_to(pixel: list[float], expected: tuple[int, ...], tolerance: int = 12) -> bool:
    return all(abs(got - want) <= tolerance for got, want in zip(pixel, expected, strict=True))


@pytest.mark.parametrize("format", list(ImageFormat))
@pytest.mark.parametrize("source", [images.png, images.jpeg, images.webp, images.avif, images.tiff])
async def test_each_format_decodes_with_the_requested_longest_side(
    renderer: SubprocessThumbnailRenderer, format: ImageFormat, source: Any
) -> None:
    thumbnail = decode(await renderer.render(source(), longest_side=256, format=format), format)
    assert (thumbnail.width, thumbnail.height) == (256, 192)
    assert thumbnail.bands == 3


@pytest.mark.parametrize("format", list(ImageFormat))
async def test_small_images_are_never_enlarged(
    renderer: SubprocessThumbnailRenderer, format: ImageFormat
) -> None:
    thumbnail = decode(
        await renderer.render(images.png(100, 80), longest_side=256, format=format), format
    )
    assert (thumbnail.width, thumbnail.height) == (100, 80)


async def test_portrait_sources_fit_the_longest_side_in_height(
    renderer: SubprocessThumbnailRenderer,
) -> None:
    data = await renderer.render(images.png(300, 900), longest_side=512, format=ImageFormat.WEBP)
    thumbnail = decode(data, ImageFormat.WEBP)
    assert (thumbnail.width, thumbnail.height) == (171, 512)


@pytest.mark.parametrize("format", [ImageFormat.WEBP, ImageFormat.AVIF])
async def test_alpha_is_kept_where_the_format_has_it(
    renderer: SubprocessThumbnailRenderer, format: ImageFormat
) -> None:
    source = images.png_half_transparent(400, 300)
    thumbnail = decode(await renderer.render(source, longest_side=200, format=format), format)
    assert thumbnail.bands == 4
    assert thumbnail.getpoint(2, 2)[3] == 0
    assert thumbnail.getpoint(197, 147)[3] == 255


async def test_jpeg_flattens_transparency_onto_white(renderer: SubprocessThumbnailRenderer) -> None:
    source = images.png_half_transparent(400, 300)
    data = await renderer.render(source, longest_side=200, format=ImageFormat.JPEG)
    thumbnail = decode(data, ImageFormat.JPEG)
    assert thumbnail.bands == 3
    assert close_to(thumbnail.getpoint(2, 2), (255, 255, 255))  # was transparent black
    assert close_to(thumbnail.getpoint(197, 147), images.RED)


async def test_exif_orientation_is_applied(renderer: SubprocessThumbnailRenderer) -> None:
    data = await renderer.render(images.jpeg_oriented(6), longest_side=256, format=ImageFormat.WEBP)
    thumbnail = decode(data, ImageFormat.WEBP)
    assert (thumbnail.width, thumbnail.height) == (128, 256)  # 400x200 turned upright


@pytest.mark.parametrize("format", list(ImageFormat))
async def test_metadata_is_stripped(
    renderer: SubprocessThumbnailRenderer, format: ImageFormat
) -> None:
    data = await renderer.render(images.jpeg_with_metadata(), longest_side=256, format=format)
    fields = decode(data, format).get_fields()
    assert not {"exif-data", "xmp-data", "iptc-data", "icc-profile-data"} & set(fields)
    assert b"secret place" not in data and b"xmpmeta" not in data


@pytest.mark.parametrize("format", list(ImageFormat))
async def test_cmyk_becomes_srgb(
    renderer: SubprocessThumbnailRenderer, format: ImageFormat
) -> None:
    data = await renderer.render(images.jpeg_cmyk(images.RED), longest_side=256, format=format)
    thumbnail = decode(data, format)
    assert (thumbnail.bands, thumbnail.interpretation) == (3, "srgb")
    red, green, blue = thumbnail.getpoint(100, 100)
    assert red > 200 and green < 80 and blue < 80  # still red, not a CMYK misread


@pytest.mark.parametrize("format", list(ImageFormat))
async def test_16_bit_becomes_8_bit(
    renderer: SubprocessThumbnailRenderer, format: ImageFormat
) -> None:
    source = images.png_16bit()
    assert pyvips.Image.new_from_buffer(source, "").format == "ushort"
    thumbnail = decode(await renderer.render(source, longest_side=256, format=format), format)
    assert (thumbnail.format, thumbnail.interpretation) == ("uchar", "srgb")
    assert close_to(thumbnail.getpoint(255, 96), (255, 128, 128), tolerance=30)  # not clipped


@pytest.mark.parametrize("source", [images.gif_animated, images.webp_animated])
@pytest.mark.parametrize("format", list(ImageFormat))
async def test_animations_give_their_first_frame(
    renderer: SubprocessThumbnailRenderer, source: Any, format: ImageFormat
) -> None:
    animation = source()
    assert pyvips.Image.new_from_buffer(animation, "").get_n_pages() == 3
    data = await renderer.render(animation, longest_side=256, format=format)
    thumbnail = decode(data, format)  # n-pages counts every page in the file, not just those loaded
    assert (thumbnail.width, thumbnail.height, thumbnail.get_n_pages()) == (256, 171, 1)
    assert close_to(thumbnail.getpoint(128, 85)[:3], images.RED)


@pytest.mark.parametrize("source", [images.jpeg, images.png, images.webp, images.avif, images.tiff])
async def test_truncated_images_fail(renderer: SubprocessThumbnailRenderer, source: Any) -> None:
    with pytest.raises(ThumbnailFailed):
        await renderer.render(
            images.truncated(source(1200, 900)), longest_side=256, format=ImageFormat.WEBP
        )


@pytest.mark.parametrize(
    "source",
    [images.random_bytes, images.text_named_png, lambda: b"", images.svg],
    ids=["random", "text", "empty", "svg"],
)
async def test_what_is_not_a_raster_image_fails_cleanly(
    renderer: SubprocessThumbnailRenderer, source: Any
) -> None:
    with pytest.raises(ThumbnailFailed):
        await renderer.render(source(), longest_side=256, format=ImageFormat.JPEG)


async def test_a_pixel_flood_is_refused_from_its_header(
    renderer: SubprocessThumbnailRenderer,
) -> None:
    source = images.png_pixel_flood()
    started = time.monotonic()
    with pytest.raises(ThumbnailFailed, match="too many pixels"):
        await renderer.render(source, longest_side=256, format=ImageFormat.WEBP)
    assert time.monotonic() - started < 2


async def test_animations_count_every_frame_against_the_pixel_limit(
    make_renderer: Renderers,
) -> None:
    renderer = make_renderer(max_pixels=300 * 200 * 2)
    with pytest.raises(ThumbnailFailed, match="too many pixels"):
        await renderer.render(images.gif_animated(), longest_side=256, format=ImageFormat.WEBP)


async def test_sources_over_the_byte_limit_are_refused(make_renderer: Renderers) -> None:
    renderer = make_renderer(max_source_bytes=1000)
    with pytest.raises(ThumbnailFailed, match="larger than 1000 bytes"):
        await renderer.render(images.png(), longest_side=256, format=ImageFormat.WEBP)


async def test_renders_run_off_the_event_loop(make_renderer: Renderers) -> None:
    """The flood, allowed here, takes about a second to decode: the loop keeps ticking."""
    renderer = make_renderer(max_pixels=10**9)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    started = time.monotonic()
    data = await renderer.render(
        images.png_pixel_flood(), longest_side=256, format=ImageFormat.WEBP
    )
    elapsed = time.monotonic() - started
    ticker.cancel()
    assert decode(data, ImageFormat.WEBP).width == 256
    assert ticks >= elapsed / 0.01 / 3  # the loop ran all along, not just at the end


async def test_the_time_limit_stops_a_slow_render(make_renderer: Renderers) -> None:
    """The same flood, allowed by size but not by time: it stops well before it would end."""
    renderer = make_renderer(max_pixels=10**9, timeout_seconds=0.05)
    with contextlib.suppress(ThumbnailFailed):  # its child started (a busy machine: too slow)
        await renderer.render(images.png(), longest_side=256, format=ImageFormat.WEBP)
    started = time.monotonic()
    with pytest.raises(ThumbnailFailed, match=r"longer than 0\.05 seconds"):
        await renderer.render(images.png_pixel_flood(), longest_side=256, format=ImageFormat.WEBP)
    assert time.monotonic() - started < 0.5


async def test_a_time_limit_of_a_millisecond_fails_at_once(make_renderer: Renderers) -> None:
    renderer = make_renderer(timeout_seconds=0.001)
    source = images.jpeg(4000, 3000)
    for _ in range(2):  # the second time with its child started
        started = time.monotonic()
        with pytest.raises(ThumbnailFailed, match="longer than"):
            await renderer.render(source, longest_side=256, format=ImageFormat.JPEG)
    assert time.monotonic() - started < 0.5


async def test_concurrent_renders_all_succeed(renderer: SubprocessThumbnailRenderer) -> None:
    sources = [
        images.png(),
        images.jpeg(),
        images.webp(),
        images.gif_animated(),
        images.jpeg_cmyk(),
        images.png_16bit(),
    ]
    formats = list(ImageFormat) * 2
    results = await asyncio.gather(
        *(
            renderer.render(source, longest_side=256, format=format)
            for source, format in zip(sources, formats, strict=True)
        )
    )
    for data, format in zip(results, formats, strict=True):
        thumbnail = decode(data, format)
        assert max(thumbnail.width, thumbnail.height) == 256


async def test_at_most_a_few_renders_run_at_once(make_renderer: Renderers) -> None:
    """Thumbnails cannot take every core: one child a render, the rest queue for a child."""
    renderer = make_renderer()
    source = images.jpeg(2000, 1500)
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, len(children()))
            await asyncio.sleep(0.01)

    before = len(children())
    watcher = asyncio.create_task(watch())
    await asyncio.gather(
        *(renderer.render(source, longest_side=256, format=ImageFormat.WEBP) for _ in range(8))
    )
    watcher.cancel()
    assert 1 <= peak - before <= CONCURRENCY


async def test_the_renderer_keeps_working_after_failures(
    renderer: SubprocessThumbnailRenderer,
) -> None:
    for bad in (images.random_bytes(), images.truncated(images.jpeg()), images.png_pixel_flood()):
        with pytest.raises(ThumbnailFailed):
            await renderer.render(bad, longest_side=256, format=ImageFormat.JPEG)
    data = await renderer.render(images.jpeg(), longest_side=256, format=ImageFormat.JPEG)
    assert decode(data, ImageFormat.JPEG).width == 256
