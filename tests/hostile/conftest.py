"""The hostile-input suite runs on both backends with the HTTP suite's fixtures.

pytest finds fixtures and hooks by name in the conftest modules on a test's path; importing
them here makes this directory's tests see the same parametrized `backend` (sqlite, postgres;
s3 too in a module with ON_S3 = True).
"""

from __future__ import annotations

from tests.integration.conftest import backend, client, make_client, pytest_generate_tests

__all__ = ["backend", "client", "make_client", "pytest_generate_tests"]
