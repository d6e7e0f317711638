"""Images that would stall or poison a renderer, against the real one: libvips in child
processes that the server kills when they take too long, die, or hit their memory limit."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import psutil
import pytest
import pytest_asyncio

from filewallball.adapters.thumbnail_pool import SubprocessThumbnailRenderer
from filewallball.domain.errors import ThumbnailFailed, ThumbnailTimedOut
from filewallball.domain.models import ImageFormat
from tests import images
from tests.integration.test_vips_renderer import children

LIMIT = 0.2  # seconds; images.webp_noise() takes about a second in one decoding call
# A render is stopped within this of its limit (the pool kills a child 0.1 s after it).
MARGIN = 0.4
SMALL = ImageFormat.WEBP


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def works(renderer: SubprocessThumbnailRenderer) -> None:
    data = await renderer.render(images.jpeg(), longest_side=64, format=SMALL)
    assert data.startswith(b"RIFF")


@pytest_asyncio.fixture
async def renderer() -> AsyncIterator[SubprocessThumbnailRenderer]:
    """A renderer whose child has started (start-up is not counted against an image)."""
    renderer = SubprocessThumbnailRenderer(timeout_seconds=LIMIT)
    await works(renderer)
    yield renderer
    await renderer.aclose()


async def test_a_decode_that_nothing_interrupts_is_cut_at_the_time_limit(
    renderer: SubprocessThumbnailRenderer,
) -> None:
    """The old renderer, in a thread, could only stop it once the decode returned (1.0 s)."""
    source = images.webp_noise()
    (before,) = children()
    started = time.monotonic()
    with pytest.raises(ThumbnailTimedOut, match=f"longer than {LIMIT} seconds"):
        await renderer.render(source, longest_side=256, format=SMALL)
    assert time.monotonic() - started < LIMIT + MARGIN
    assert gone(before.pid)  # killed and reaped
    await works(renderer)


async def test_the_same_image_renders_within_a_longer_limit() -> None:
    """The image is slow, not broken, and slow enough that the test above means something."""
    renderer = SubprocessThumbnailRenderer(timeout_seconds=30)
    try:
        await works(renderer)
        started = time.monotonic()
        data = await renderer.render(images.webp_noise(), longest_side=256, format=SMALL)
        elapsed = time.monotonic() - started
    finally:
        await renderer.aclose()
    assert data.startswith(b"RIFF")
    assert elapsed > LIMIT + MARGIN, "decoding it no longer outlasts the time limit and margin"


async def test_an_image_needing_more_memory_than_the_bound_fails_cleanly() -> None:
    bound = 128 * 1024**2  # images.webp_large() decodes into 190 MB
    bounded = SubprocessThumbnailRenderer(max_memory_bytes=bound)
    unbounded = SubprocessThumbnailRenderer(max_memory_bytes=1024**3)
    try:
        with pytest.raises(ThumbnailFailed, match=f"needs more memory than {bound} bytes"):
            await bounded.render(images.webp_large(), longest_side=256, format=SMALL)
        await works(bounded)
        await unbounded.render(images.webp_large(), longest_side=256, format=SMALL)
    finally:
        await bounded.aclose()
        await unbounded.aclose()


async def test_a_child_killed_between_renders_is_replaced() -> None:
    # A generous limit: a fresh child's first render loads libvips' modules, which on a loaded
    # machine can take longer than LIMIT; what is tested here is the replacement.
    renderer = SubprocessThumbnailRenderer(timeout_seconds=30)
    try:
        await works(renderer)
        (killed,) = children()
        killed.send_signal(signal.SIGKILL)
        await asyncio.sleep(0.1)
        await works(renderer)  # the image is not failed for its child's death
        (replacement,) = children()
        assert replacement.pid != killed.pid
        assert gone(killed.pid)
    finally:
        await renderer.aclose()


async def test_a_child_killed_mid_render_is_replaced() -> None:
    """Once, the render goes on in a fresh child; its fresh child killed too, it fails."""
    renderer = SubprocessThumbnailRenderer(timeout_seconds=30)
    await works(renderer)
    killed: set[int] = set()

    async def kill_the_renderer_child_once_busy() -> None:
        while True:
            busy = [child for child in children() if child.pid not in killed]
            if busy and busy[0].cpu_times().user > 0.3:
                killed.add(busy[0].pid)
                busy[0].send_signal(signal.SIGKILL)
                return
            await asyncio.sleep(0.02)

    try:
        render = asyncio.create_task(
            renderer.render(images.webp_noise(), longest_side=256, format=SMALL)
        )
        await kill_the_renderer_child_once_busy()
        assert (await render).startswith(b"RIFF")

        render = asyncio.create_task(
            renderer.render(images.webp_noise(), longest_side=256, format=SMALL)
        )
        await kill_the_renderer_child_once_busy()
        await kill_the_renderer_child_once_busy()
        with pytest.raises(ThumbnailFailed, match=r"killed its process \(SIGKILL\)"):
            await render
        await works(renderer)
        assert all(gone(pid) for pid in killed)
    finally:
        await renderer.aclose()


async def test_a_cancelled_render_takes_its_child_with_it(
    renderer: SubprocessThumbnailRenderer,
) -> None:
    """A client gone mid-render: the child's pipes are out of step, so it is not reused."""
    (before,) = children()
    render = asyncio.create_task(
        renderer.render(images.webp_noise(), longest_side=256, format=SMALL)
    )
    await asyncio.sleep(0.1)
    render.cancel()
    with pytest.raises(asyncio.CancelledError):
        await render
    assert gone(before.pid)
    await works(renderer)


async def test_aclose_leaves_no_child() -> None:
    renderer = SubprocessThumbnailRenderer()
    await asyncio.gather(*(works(renderer) for _ in range(4)))
    pids = [child.pid for child in children()]
    assert 1 <= len(pids) <= 2
    await renderer.aclose()
    assert children() == []
    assert not any(psutil.pid_exists(pid) for pid in pids)  # reaped, not left as zombies


CRASHING_PARENT = """
import anyio, os, sys
from filewallball.adapters.thumbnail_pool import SubprocessThumbnailRenderer
from filewallball.domain.models import ImageFormat
from tests import images
from tests.integration.test_vips_renderer import children

async def main():
    renderer = SubprocessThumbnailRenderer()
    await renderer.render(images.jpeg(), longest_side=64, format=ImageFormat.WEBP)
    print("rendered", flush=True)
    sys.stdin.readline()
    os._exit(1)  # no aclose, no clean-up of any kind

anyio.run(main)
"""


def test_children_end_with_a_parent_that_dies() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", CRASHING_PARENT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=os.getcwd(),
    )
    assert parent.stdin is not None and parent.stdout is not None
    assert parent.stdout.readline() == b"rendered\n"
    grandchildren = children(psutil.Process(parent.pid))
    assert len(grandchildren) == 1
    parent.stdin.close()  # now it exits
    parent.wait(timeout=10)
    deadline = time.monotonic() + 5
    while not gone(grandchildren[0].pid):
        assert time.monotonic() < deadline, "the child outlived its parent"
        time.sleep(0.05)
