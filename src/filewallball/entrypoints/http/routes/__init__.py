"""The HTTP routes, one module per resource; each makes its router with `Router`."""

from __future__ import annotations

from functools import partial
from typing import Any

from fastapi import APIRouter
from fastapi.routing import APIRoute


class _Route(APIRoute):
    """HEAD wherever GET is allowed (RFC 9110 §9.3.2): the GET endpoint answers it and the edge
    sends its headers without the body. FastAPI, unlike Starlette, does not add HEAD itself."""

    def __init__(self, path: str, endpoint: Any, **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        if self.methods and "GET" in self.methods:
            self.methods.add("HEAD")


Router = partial(APIRouter, route_class=_Route)
