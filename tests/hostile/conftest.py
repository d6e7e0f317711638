"""The hostile-input suite runs on both backends with the HTTP suite's fixtures.

pytest finds fixtures by name in the conftest modules on a test's path; importing them here
makes this directory's tests see the same parametrized `backend` (sqlite, postgres).
"""

from __future__ import annotations

from tests.integration.conftest import backend, client, make_client

__all__ = ["backend", "client", "make_client"]
