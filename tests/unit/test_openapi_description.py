"""The OpenAPI description's promises (docs/api.md), checked on the description itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from filewallball.entrypoints.http.app import create_app
from filewallball.settings import Settings

METHODS = ("get", "put", "post", "delete", "patch", "head")


@pytest.fixture(scope="module")
def description(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    app = create_app(Settings(data_dir=Path(tmp_path_factory.mktemp("openapi"))))
    return app.openapi()


def _operations(description: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, item[method])
        for path, item in description["paths"].items()
        for method in METHODS
        if method in item
    ]


def test_every_error_is_a_problem_and_the_gate_is_described(description: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in description["components"]["schemas"]
    for path, method, operation in _operations(description):
        errors = {s: r for s, r in operation["responses"].items() if int(s) >= 400}
        for status, response in errors.items():
            if method != "head":
                assert list(response["content"]) == ["application/problem+json"], (path, status)
                media = response["content"]["application/problem+json"]
                assert media["schema"] == {"$ref": "#/components/schemas/Problem"}
                assert media["example"]["status"] == int(status)
            assert "X-Request-ID" in response["headers"]
        if path in ("/healthz", "/readyz"):
            assert operation["security"] == []
        else:
            assert {"401", "403", "429", "503"} <= set(errors), (method, path)
            assert "Retry-After" in errors["429"]["headers"]


def test_operation_ids_are_readable_and_unique(description: dict[str, Any]) -> None:
    ids = [operation["operationId"] for _, _, operation in _operations(description)]
    assert len(ids) == len(set(ids))
    assert {"upload", "upload_raw", "get_file", "list_files", "delete_file", "download"} <= set(ids)
    assert all(i.isidentifier() and "__" not in i for i in ids)


def test_every_operation_has_an_example(description: dict[str, Any]) -> None:
    for path, method, operation in _operations(description):
        if method == "head":
            continue
        success = [r for s, r in operation["responses"].items() if s.startswith("2")]
        for response in success:
            for media_type, media in response.get("content", {}).items():
                if media.get("schema", {}).get("format") == "binary":
                    continue  # bytes: no example to show
                assert "example" in media, (method, path, media_type)


def test_bearer_scheme_and_headers(description: dict[str, Any]) -> None:
    assert description["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert description["security"] == [{"bearerAuth": []}]
    paths = description["paths"]
    assert "Location" in paths["/upload"]["post"]["responses"]["201"]["headers"]
    assert "ETag" in paths["/files/{file_id}"]["get"]["responses"]["200"]["headers"]
    download = paths["/download/{file_id}"]["get"]
    assert {"Content-Digest", "Repr-Digest", "ETag"} <= set(download["responses"]["200"]["headers"])
    assert "RateLimit" in download["responses"]["200"]["headers"]
    names = {p["name"] for p in paths["/files/{file_id}"]["delete"]["parameters"]}
    assert {"If-Match", "If-Unmodified-Since"} <= names
    body = paths["/upload"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["properties"]["file"] == {"type": "string", "format": "binary"}
