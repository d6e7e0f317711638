"""The framework ceiling (scenario e): a bare FastAPI app with one JSON route, no middleware."""

from __future__ import annotations

from fastapi import FastAPI

PATH = "/ceiling"


def create_app() -> FastAPI:
    """The app factory, served by `bench.ceiling_serve` exactly as `filewallball serve` serves ours."""
    app = FastAPI(title="FileWallBall benchmark ceiling", docs_url=None, redoc_url=None)

    @app.get(PATH)
    async def ceiling() -> dict[str, object]:
        # About the work of a small JSON answer: a dict serialised by FastAPI's default path.
        return {"ceiling": True, "framework": "fastapi", "route": PATH}

    return app
