"""Shared helpers of the deployment tests: where things are, and skip-or-fail for missing tools."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZE_DIR = ROOT / "infra" / "kustomize"
OVERLAYS = ("dev", "staging", "prod")
# The overlays whose blobs are in S3 (components/s3-storage); dev keeps them on its volume.
S3_OVERLAYS = ("staging", "prod")


def unavailable(reason: str) -> None:
    """Skip, or fail when FWB_REQUIRE_SERVICES=1 (as in CI)."""
    if os.environ.get("FWB_REQUIRE_SERVICES") == "1":
        pytest.fail(f"required tool unavailable: {reason}")
    pytest.skip(reason)


def venv_tool(name: str) -> str | None:
    """A console script of this environment (next to the interpreter), else one on PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    return shutil.which(name)
