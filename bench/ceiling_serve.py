"""`python -m bench.ceiling_serve [serve options]`: `filewallball serve` with the app swapped.

The ceiling must run on the same server program with the same settings (workers, loop, HTTP
parser, logging, timeouts) as FileWallBall. Rather than copy those settings, this runs the real
`serve` command and replaces only the application it names, where the server receives it:
uvicorn's `Config` and granian's `Granian`. The benchmark checks that the ceiling route answers,
so a `serve` that starts its server some other way fails loudly instead of measuring the wrong app.
"""

from __future__ import annotations

import sys
from typing import Any

TARGET = "bench.ceiling:create_app"


def _swap_uvicorn() -> None:
    import uvicorn.config

    original = uvicorn.config.Config.__init__

    def init(self: Any, app: Any, *args: Any, **kwargs: Any) -> None:
        original(self, TARGET, *args, **kwargs)

    uvicorn.config.Config.__init__ = init  # type: ignore[method-assign]


def _swap_granian() -> None:
    try:
        import granian
    except ImportError:
        return
    server_class: Any = granian.Granian
    original = server_class.__init__

    def init(self: Any, target: Any, *args: Any, **kwargs: Any) -> None:
        original(self, TARGET, *args, **kwargs)

    server_class.__init__ = init


def main() -> None:
    _swap_uvicorn()
    _swap_granian()
    from filewallball.entrypoints.cli import main as filewallball_main

    sys.argv = ["filewallball", "serve", *sys.argv[1:]]
    filewallball_main()


if __name__ == "__main__":
    main()
