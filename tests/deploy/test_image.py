"""The image, really built and run the way Kubernetes runs it.

Built twice, by the two engines Debian 12 packages: docker.io's BuildKit (`DOCKER_BUILDKIT=1
docker build`, a private dockerd) and buildah (`buildah build --format docker`, run by podman),
each from the Dockerfile as it is, on local stand-ins of its base images (tests/deploy/
standins.py: base image registries are unreachable here). Every container runs as the manifests
run the pods: uid 10001, read-only root filesystem, no capabilities, no privilege escalation, a
writable volume at /data and a tmpfs at /tmp, on the host's network (so the machine's
PostgreSQL and Redis are reachable at 127.0.0.1).

Skips with the reason when an engine cannot start here; fails instead under
FWB_REQUIRE_SERVICES=1 (CI, where .ci/run installs docker.io, buildah, podman and debootstrap).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import pyvips  # type: ignore[import-untyped]

from tests import images
from tests.deploy.conftest import ROOT, unavailable, venv_tool
from tests.deploy.dockerfile import DOCKERFILE, expand, parse_dockerfile
from tests.deploy.engines import ENGINES, Engine, EngineUnavailable
from tests.deploy.standins import Standins, engine_store, standins

TAG = "localhost/filewallball:test"
ADMIN_KEY = "fwb_imagetest000_" + "A" * 43
BUILD_ARGS = {"VERSION": "0.0.0-test", "REVISION": "0123abc", "CREATED": "2026-01-02T03:04:05Z"}
# securityContext of the manifests: runAsUser/runAsGroup 10001, readOnlyRootFilesystem,
# capabilities drop ALL, allowPrivilegeEscalation false; emptyDir /tmp.
AS_KUBERNETES = [
    "--network=host",
    "--user=10001:10001",
    "--read-only",
    "--cap-drop=ALL",
    "--security-opt=no-new-privileges",
    "--tmpfs=/tmp",
]


@dataclass
class Built:
    engine: Engine
    tag: str

    def run(
        self, *args: str, data: Path, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """One container to completion, as a Kubernetes Job runs it (no probes)."""
        return self.engine(
            "run",
            "--rm",
            "--no-healthcheck",
            *self.engine.run_flags,
            *AS_KUBERNETES,
            f"--volume={data}:/data",
            *(f"--env={key}={value}" for key, value in (env or {}).items()),
            self.tag,
            *args,
            timeout=timeout,
            check=False,
        )

    def start(self, *args: str, data: Path, env: dict[str, str]) -> str:
        """A long-running container, as a Deployment's pod; its name."""
        name = f"fwb-{uuid.uuid4().hex[:10]}"
        self.engine(
            "run",
            "--detach",
            f"--name={name}",
            *self.engine.run_flags,
            *AS_KUBERNETES,
            *self.engine.health_flags(),
            f"--volume={data}:/data",
            *(f"--env={key}={value}" for key, value in env.items()),
            self.tag,
            *args,
        )
        return name

    def logs(self, name: str) -> str:
        result = self.engine("logs", name, check=False)
        return (result.stdout + result.stderr)[-4000:]

    def stop(self, name: str) -> int:
        """SIGTERM as the kubelet sends it; the exit code once the container has stopped."""
        self.engine("stop", "--time=30", name, timeout=60)
        code = self.engine("inspect", "--format", "{{.State.ExitCode}}", name).stdout
        self.engine("rm", "--force", name, check=False)
        return int(code)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def volume(path: Path, owner: int = 10001) -> Path:
    path.mkdir()
    os.chown(path, owner, owner)
    return path


def wait_for(
    what: str, check: Callable[[], bool], built: Built, name: str, timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout:.0f} s; the container's logs:\n{built.logs(name)}")
        time.sleep(0.3)


@contextlib.contextmanager
def serving(built: Built, name: str, port: int) -> Iterator[httpx.Client]:
    """A client of the container's API once /healthz answers."""
    with httpx.Client(
        base_url=f"http://127.0.0.1:{port}",
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
        timeout=30,
    ) as client:
        wait_for("no /healthz answer", lambda: client.get("/healthz").is_success, built, name)
        yield client


@pytest.fixture(scope="module")
def base_images() -> Iterator[Standins]:
    if os.geteuid() != 0:
        unavailable("building the image needs root (a private dockerd, rootful buildah)")
    if shutil.which("debootstrap") is None:
        unavailable("debootstrap is not installed (it makes the stand-in Python base image)")
    uv = shutil.which("uv") or venv_tool("uv")
    if uv is None:
        unavailable("uv is not installed (it fetches the stand-in uv image's binaries)")
    args, _ = parse_dockerfile(DOCKERFILE.read_text())
    with standins(args["UV_VERSION"], uv) as found:
        yield found


@pytest.fixture(scope="module", params=sorted(ENGINES))
def built(
    request: pytest.FixtureRequest,
    base_images: Standins,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Built]:
    """The image built by one engine; one build serves every test of that engine."""
    with engine_store(base_images, request.param) as store:
        try:
            engine = ENGINES[request.param](tmp_path_factory.mktemp(request.param), store)
        except EngineUnavailable as error:
            unavailable(f"{request.param}: {error}")
        try:
            args, stages = parse_dockerfile(DOCKERFILE.read_text())
            engine.load(base_images, args["PYTHON_IMAGE"], expand(stages[0].base, args))
            engine.build(ROOT, TAG, BUILD_ARGS)
            yield Built(engine, TAG)
        finally:
            engine.close()


def test_image_config(built: Built) -> None:
    config = built.engine.config(built.tag)
    args, _ = parse_dockerfile(DOCKERFILE.read_text())
    labels = config["Labels"]
    assert isinstance(labels, dict)
    assert labels["org.opencontainers.image.base.name"] == args["PYTHON_IMAGE"]
    assert labels["org.opencontainers.image.version"] == BUILD_ARGS["VERSION"]
    assert labels["org.opencontainers.image.revision"] == BUILD_ARGS["REVISION"]
    assert labels["org.opencontainers.image.created"] == BUILD_ARGS["CREATED"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["filewallball"]
    healthcheck = config["Healthcheck"]  # kept by buildah only with --format docker
    assert isinstance(healthcheck, dict)
    assert healthcheck["Test"][:2] == ["CMD", "python"]


# Docker's build only: buildah reuses layers only with --layers, which its build here does not
# use, so it has no cache to show; the Dockerfile's layer order is the same for both.
@pytest.mark.parametrize("built", ["docker"], indirect=True)
def test_a_new_version_rebuilds_only_the_labels(built: Built) -> None:
    """VERSION, REVISION and CREATED change on every release build; no layer may depend on them."""
    engine = built.engine
    new = {"VERSION": "0.0.1-test", "REVISION": "4567def", "CREATED": "2026-02-03T04:05:06Z"}
    args = [f"--build-arg={key}={value}" for key, value in new.items()]
    tag = "localhost/filewallball:test-rebuilt"
    result = engine(
        *["build", "--network=host", "--progress=plain", *args, "-t", tag, str(ROOT)],
        timeout=600,
    )
    engine.tags.append(tag)
    # Plain progress: "#7 [runtime 2/5] RUN apt-get ..." then "#7 CACHED" for a reused step.
    steps = {
        step: what
        for step, what in re.findall(
            r"(?m)^(#\d+) \[(?:builder|runtime) [^\]]*\] (.*)$", result.stderr
        )
        if not what.startswith("FROM ")
    }
    cached = set(re.findall(r"(?m)^(#\d+) CACHED$", result.stderr))
    assert steps, result.stderr[-3000:]
    assert {step: what for step, what in steps.items() if step not in cached} == {}
    assert engine.label(tag, "org.opencontainers.image.version") == new["VERSION"]


def test_nothing_in_the_image_is_writable_by_others(built: Built) -> None:
    """World-writable files anywhere, or world-writable folders without the sticky bit."""
    result = built.engine(
        "run",
        "--rm",
        *built.engine.run_flags,
        "--network=host",
        "--user=0:0",  # to see into every folder
        "--entrypoint=find",
        built.tag,
        *["/", "-xdev", "(", "-type", "f", "-perm", "-0002", ")", "-o"],
        *["(", "-type", "d", "-perm", "-0002", "!", "-perm", "-1000", ")", "-print"],
    )
    assert result.stdout.split() == [], result.stdout


def test_serves_uploads_downloads_and_thumbnails_as_a_pod(built: Built, tmp_path: Path) -> None:
    """The embedded default (SQLite, blobs and jobs in /data and in process) on another port."""
    data = volume(tmp_path / "data")
    port = free_port()
    name = built.start(
        *["serve", "--host", "127.0.0.1", "--port", str(port)],
        data=data,
        env={"FWB_BOOTSTRAP_ADMIN_KEY": ADMIN_KEY},
    )
    try:
        with serving(built, name, port) as client:
            picture = images.png(640, 480)
            response = client.post("/upload", files={"file": ("picture.png", picture)})
            assert response.status_code == 201, response.text
            record = response.json()
            download = client.get(f"/download/{record['id']}")
            assert download.status_code == 200
            assert download.content == picture
            thumbnail = f"/thumbnails/{record['id']}"
            wait_for(
                "no thumbnail",
                lambda: client.get(thumbnail, params={"size": "small"}).status_code == 200,
                built,
                name,
            )
            rendered = client.get(
                thumbnail, params={"size": "small"}, headers={"accept": "image/jpeg"}
            )
            assert rendered.headers["content-type"] == "image/jpeg"
            assert pyvips.Image.new_from_buffer(rendered.content, "").width == 256
        # The HEALTHCHECK found the port on the command line (it is not 8000).
        wait_for("not healthy", lambda: built.engine.healthy(name), built, name)
        status = built.engine("exec", name, "cat", "/proc/1/status").stdout
        fields = dict(line.split(":", 1) for line in status.splitlines())
        assert fields["Uid"].split()[:2] == ["10001", "10001"]
        assert int(fields["CapEff"], 16) == 0
        assert fields["NoNewPrivs"].strip() == "1"
        mounts = built.engine("exec", name, "cat", "/proc/1/mounts").stdout.splitlines()
        [root] = [line.split() for line in mounts if line.split()[1] == "/"]
        assert "ro" in root[3].split(","), root
        assert (data / "filewallball.db").exists(), "the metadata is not on the volume"
        assert built.stop(name) == 0, built.logs(name)
    finally:
        built.engine("rm", "--force", name, check=False)


def test_a_data_dir_owned_by_root_is_one_line(built: Built, tmp_path: Path) -> None:
    """A host folder mounted at /data must belong to 10001: say so, once, and exit 2."""
    data = volume(tmp_path / "data", owner=0)
    result = built.run("serve", "--host", "127.0.0.1", "--port", str(free_port()), data=data)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "is not a folder this user (uid 10001) can write" in lines[0]


def test_migrate_serve_and_worker_as_the_prod_overlay_runs_them(
    built: Built, tmp_path: Path, pg_url: str, redis_url_and_prefix: tuple[str, str]
) -> None:
    """PostgreSQL migrated by a one-shot `migrate`, the API and a worker sharing Redis."""
    redis_url, prefix = redis_url_and_prefix
    data = volume(tmp_path / "data")
    env = {
        "FWB_DATABASE_URL": pg_url,
        "FWB_REDIS_URL": redis_url,
        "FWB_REDIS_PREFIX": prefix,
        "FWB_AUTO_MIGRATE": "false",
    }
    migrate = built.run("migrate", data=data, env=env)
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    port = free_port()
    api = built.start(
        *["serve", "--host", "127.0.0.1", "--port", str(port)],
        data=data,
        env={**env, "FWB_BOOTSTRAP_ADMIN_KEY": ADMIN_KEY},
    )
    # Host networking: the worker's metrics on a free port, not the default 9101 that
    # another program of the machine may hold.
    worker_env = {**env, "FWB_WORKER_METRICS_PORT": str(free_port())}
    worker = built.start("worker", "--concurrency", "2", data=data, env=worker_env)
    try:
        with serving(built, api, port) as client:
            response = client.post("/upload", files={"file": ("photo.jpg", images.jpeg(800, 600))})
            assert response.status_code == 201, response.text
            record = response.json()
            wait_for(
                "the worker rendered no thumbnail",
                lambda: client.get(f"/files/{record['id']}").json()["thumbnail_status"] == "ready",
                built,
                worker,
            )
            rendered = client.get(
                f"/thumbnails/{record['id']}",
                params={"size": "small"},
                headers={"accept": "image/webp"},
            )
            assert rendered.status_code == 200
            assert rendered.headers["content-type"] == "image/webp"
        assert built.stop(worker) == 0, built.logs(worker)
        assert built.stop(api) == 0, built.logs(api)
    finally:
        built.engine("rm", "--force", api, worker, check=False)


@pytest.fixture
def redis_url_and_prefix(redis_server: str, redis_prefix: str) -> tuple[str, str]:
    return redis_server, redis_prefix
