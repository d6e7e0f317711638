"""Private container engines from Debian's packages, each in a folder of its own.

- `DockerEngine`: Debian 12's docker.io, a dockerd of our own (own socket, data and exec roots,
  no iptables, no bridge: containers use the host's network) and Debian's 20.10 client, whose
  `DOCKER_BUILDKIT=1 docker build` is the BuildKit built into that dockerd.
- `BuildahEngine`: Debian 12's buildah builds, podman runs, both on a storage of our own.

Nothing touches the machine's own engines, images or settings. Each engine keeps its images
and caches in `store` (lasting between runs next to the stand-ins, see standins.engine_store,
or temporary), its run state in `rundir` and its sockets and logs in `workdir`; `close()`
removes all but the store.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.deploy.standins import Standins, remove_tree, unmount_under

RUN = Path("/run/fwb-image")
STANDIN_LABEL = "fwb.test.standin"  # the stand-ins' key, so a lasting store loads them once


class EngineUnavailable(Exception):
    """The engine cannot run here (not installed, not root, does not start)."""


def _tool(name: str, *preferred: str) -> str:
    for candidate in preferred:
        if Path(candidate).is_file():
            return candidate
    found = shutil.which(name)
    if found is None:
        raise EngineUnavailable(f"{name} is not installed")
    return found


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Engine:
    """What the tests need of an engine; `cli` runs containers with docker's flags."""

    name: str
    cli: list[str]
    env: dict[str, str]
    run_flags: list[str] = []  # added to every `run`

    def __init__(self, workdir: Path, store: Path | None) -> None:
        if os.geteuid() != 0:
            raise EngineUnavailable("a private container engine needs root")
        self.workdir = workdir
        self.lasting = store is not None
        self.store = store if store is not None else workdir / "store"
        self.store.mkdir(exist_ok=True)
        unmount_under(self.store)  # what a killed run may have left mounted
        # Run state: a lasting store's at a fixed path (podman records it with the store and
        # refuses another one later), emptied at each start as a reboot would; short paths
        # (podman refuses a runroot longer than 50 characters).
        if self.lasting:
            self.rundir = RUN / f"{self.store.parent.name}-{self.store.name}"
            remove_tree(self.rundir)
            self.rundir.mkdir(parents=True)
        else:
            self.rundir = Path(tempfile.mkdtemp(prefix="fwb-run-"))
        self.log = workdir / "engine.log"
        self.tags: list[str] = []  # what was built here, removed again by close()

    def __call__(
        self, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """The container CLI (docker or podman) on this engine."""
        return self._run([*self.cli, *args], timeout=timeout, check=check)

    def _run(
        self,
        argv: list[str],
        *,
        timeout: float,
        check: bool = True,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            argv,
            env={**os.environ, **self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv[:4])} ... exited {result.returncode}:\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        return result

    def load(self, standins: Standins, python_ref: str, uv_ref: str) -> None:
        """The stand-ins under the base images' names, unless this store has them already."""
        for ref in (python_ref, uv_ref):
            if self.label(ref, STANDIN_LABEL) != standins.key:
                self._load(standins, python_ref, uv_ref)
                return

    def _load(self, standins: Standins, python_ref: str, uv_ref: str) -> None:
        raise NotImplementedError

    def label(self, ref: str, name: str) -> str | None:
        try:
            labels = self.config(ref).get("Labels") or {}
        except AssertionError:  # no such image
            return None
        assert isinstance(labels, dict)
        return labels.get(name)

    def build(self, context: Path, tag: str, build_args: dict[str, str]) -> None:
        raise NotImplementedError

    def config(self, tag: str) -> dict[str, object]:
        """The image's Docker-format config (Labels, Healthcheck, User, Entrypoint, ...)."""
        raise NotImplementedError

    def health_flags(self) -> list[str]:
        """`run` flags that make the HEALTHCHECK run soon and often (the test cannot wait 30 s)."""
        return []

    def healthy(self, container: str) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        unmount_under(self.store)
        remove_tree(self.rundir)
        remove_tree(self.workdir)


class DockerEngine(Engine):
    name = "docker"

    def __init__(self, workdir: Path, store: Path | None) -> None:
        dockerd = _tool("dockerd", "/usr/sbin/dockerd")
        # Debian's client, not a newer one on PATH: its `docker build` uses the daemon's BuildKit
        # (newer clients want the buildx plugin, which Debian 12 does not package).
        docker = _tool("docker", "/usr/bin/docker")
        super().__init__(workdir, store)
        socket = workdir / "docker.sock"
        (workdir / "daemon.json").write_text("{}")  # not the machine's /etc/docker/daemon.json
        self.cli = [docker]
        self.env = {
            "DOCKER_HOST": f"unix://{socket}",
            "DOCKER_CONFIG": str(workdir / "client"),
            "DOCKER_BUILDKIT": "1",
        }
        namespace = f"fwb-test-{workdir.name}"
        with self.log.open("wb") as log:
            self._daemon = subprocess.Popen(
                [
                    dockerd,
                    "--config-file",
                    str(workdir / "daemon.json"),
                    "--host",
                    f"unix://{socket}",
                    "--data-root",
                    str(self.store / "root"),
                    "--exec-root",
                    str(workdir / "exec"),
                    "--pidfile",
                    str(workdir / "docker.pid"),
                    "--containerd-namespace",
                    namespace,
                    "--containerd-plugins-namespace",
                    f"{namespace}-plugins",
                    "--iptables=false",
                    "--ip-masq=false",
                    "--bridge=none",
                    "--log-level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while self("version", timeout=10, check=False).returncode != 0:
            if self._daemon.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise EngineUnavailable(f"dockerd did not start:\n{_tail(self.log)}")
            time.sleep(0.5)
        self._remove_containers()  # a killed run's

    def _remove_containers(self) -> None:
        containers = self("ps", "-aq", timeout=30, check=False).stdout.split()
        if containers:
            self("rm", "-f", *containers, timeout=60, check=False)

    def _load(self, standins: Standins, python_ref: str, uv_ref: str) -> None:
        label = f"--change=LABEL {STANDIN_LABEL}={standins.key}"
        changes = [f"--change=ENV {line}" for line in standins.python_env]
        self(
            "import",
            label,
            *changes,
            '--change=CMD ["python3"]',
            str(standins.python_tar),
            python_ref,
        )
        self("import", label, str(standins.uv_tar), uv_ref)

    def build(self, context: Path, tag: str, build_args: dict[str, str]) -> None:
        args = [f"--build-arg={key}={value}" for key, value in build_args.items()]
        # The host's network: this dockerd has no bridge (and must not touch the firewall).
        # --no-cache: every step runs every time; only the RUN --mount caches last.
        self(
            "build",
            "--no-cache",
            "--network=host",
            "--progress=plain",
            *args,
            "-t",
            tag,
            str(context),
            timeout=900,
        )
        self.tags.append(tag)

    def config(self, tag: str) -> dict[str, object]:
        [image] = json.loads(self("image", "inspect", tag).stdout)
        config: dict[str, object] = image["Config"]
        return config

    def health_flags(self) -> list[str]:
        return ["--health-interval=1s", "--health-start-period=30s"]

    def healthy(self, container: str) -> bool:
        status = self("inspect", "--format", "{{.State.Health.Status}}", container).stdout
        return status.strip() == "healthy"

    def close(self) -> None:
        if self._daemon.poll() is None:
            self._remove_containers()
            if self.lasting:  # keep the stand-ins and the cache mounts, not what was built
                for tag in self.tags:
                    self("image", "rm", "--force", tag, timeout=60, check=False)
                self("image", "prune", "--force", timeout=120, check=False)
                # The layers' cache, not the RUN --mount=type=cache folders (exec.cachemount).
                self(
                    "builder", "prune", "--force", "--filter=type=regular", timeout=120, check=False
                )
            self._daemon.send_signal(signal.SIGTERM)
            try:
                self._daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._daemon.kill()
                self._daemon.wait(timeout=10)
        super().close()


class BuildahEngine(Engine):
    name = "buildah"

    def __init__(self, workdir: Path, store: Path | None) -> None:
        buildah = _tool("buildah")
        podman = _tool("podman")
        super().__init__(workdir, store)
        storage = [
            f"--root={self.store / 'storage'}",
            f"--runroot={self.rundir / 'storage'}",
            "--storage-driver=overlay",
        ]
        (self.store / "tmp").mkdir(exist_ok=True)
        self.buildah = [buildah, *storage]
        self.cli = [
            podman,
            *storage,
            f"--tmpdir={self.rundir / 'podman'}",
            "--events-backend=file",
            "--cgroup-manager=cgroupfs",
        ]
        # buildah keeps RUN --mount=type=cache folders under TMPDIR: ours, not /var/tmp.
        self.env = {"TMPDIR": str(self.store / "tmp")}
        # Rootful podman raises nofile and nproc for its containers; where this process lacks
        # CAP_SYS_RESOURCE (some CI sandboxes) runc cannot, and no container starts.
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        self.run_flags = ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", "nproc=4096:4096"]
        if self._run([buildah, "version"], timeout=30, check=False).returncode != 0:
            super().close()
            raise EngineUnavailable("buildah does not run")
        self._remove_containers()  # a killed run's

    def _buildah(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self._run([*self.buildah, *args], timeout=timeout)

    def _remove_containers(self) -> None:
        self("rm", "--all", "--force", timeout=120, check=False)
        self._run([*self.buildah, "rm", "--all"], timeout=120, check=False)

    def _load(self, standins: Standins, python_ref: str, uv_ref: str) -> None:
        python = [*(f"--env={line}" for line in standins.python_env), "--cmd=python3"]
        for tarball, ref, settings in (
            (standins.python_tar, python_ref, python),
            (standins.uv_tar, uv_ref, []),
        ):
            container = self._buildah("from", "scratch").stdout.strip()
            self._buildah("add", container, str(tarball), "/", timeout=300)
            self._buildah("config", f"--label={STANDIN_LABEL}={standins.key}", *settings, container)
            self._buildah("commit", "--quiet", container, ref, timeout=300)
            self._buildah("rm", container)

    def build(self, context: Path, tag: str, build_args: dict[str, str]) -> None:
        args = [f"--build-arg={key}={value}" for key, value in build_args.items()]
        # --format docker keeps the HEALTHCHECK (OCI has none); --pull=never: the stand-ins.
        self._buildah(
            "build",
            "--format=docker",
            "--pull=never",
            "--network=host",
            *args,
            "-t",
            tag,
            str(context),
            timeout=900,
        )
        self.tags.append(tag)

    def config(self, tag: str) -> dict[str, object]:
        image = json.loads(self._buildah("inspect", "--type", "image", tag).stdout)
        config: dict[str, object] = image["Docker"]["config"]
        return config

    def healthy(self, container: str) -> bool:
        # podman schedules health checks with systemd timers; run one by hand instead.
        return self("healthcheck", "run", container, check=False).returncode == 0

    def close(self) -> None:
        self._remove_containers()
        if self.lasting:  # keep the stand-ins and the cache mounts, not what was built
            for tag in self.tags:
                self._run([*self.buildah, "rmi", "--force", tag], timeout=120, check=False)
            self._run([*self.buildah, "rmi", "--prune"], timeout=120, check=False)
        super().close()


ENGINES: dict[str, type[Engine]] = {"docker": DockerEngine, "buildah": BuildahEngine}
