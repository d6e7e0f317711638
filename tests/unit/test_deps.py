"""Absolute URLs start at the request's base URL, made once per origin: the same as Starlette's."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.requests import Request

from filewallball.entrypoints.http import deps
from filewallball.settings import Settings


class _Container:
    def __init__(self, public_base_url: str | None) -> None:
        self._settings = Settings(public_base_url=public_base_url)

    def settings(self) -> Settings:
        return self._settings


class _App:
    def __init__(self, public_base_url: str | None) -> None:
        self.state = type("State", (), {"container": _Container(public_base_url)})()


def _request(public_base_url: str | None = None, **scope: Any) -> Request:
    base: dict[str, Any] = {
        "type": "http",
        "method": "GET",
        "scheme": "http",
        "server": ("10.0.0.5", 8000),
        "path": "/files/abc",
        "root_path": "",
        "query_string": b"x=1",
        "headers": [],
        "app": _App(public_base_url),
    }
    return Request(base | scope)


@pytest.mark.parametrize(
    "scope",
    [
        {"headers": [(b"host", b"files.example.org")]},
        {"headers": [(b"host", b"files.example.org:8443")], "scheme": "https"},
        {"headers": []},
        {"headers": [], "server": ("10.0.0.5", 80)},
        {"headers": [(b"host", b"example.org")], "root_path": "/api"},
        {"headers": [(b"accept", b"*/*"), (b"host", b"[::1]:8000")]},
    ],
)
def test_the_base_url_is_starlettes(scope: dict[str, Any]) -> None:
    request = _request(**scope)
    assert deps.base_url(request) == str(request.base_url).rstrip("/")
    assert deps.base_url(request) == deps.base_url(_request(**scope))  # and remembered


def test_the_configured_base_url_wins() -> None:
    request = _request("https://files.example.org", headers=[(b"host", b"evil.example")])
    assert deps.base_url(request) == "https://files.example.org"
