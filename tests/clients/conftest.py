"""One running server for the clients' tests (the generated SDK and schemathesis): a real
`filewallball serve`, started once for the session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.test_server import Server, start_server


@pytest.fixture(scope="session")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    started = start_server(tmp_path_factory.mktemp("clients"), log_name="clients.log")
    yield started
    started.stop()
