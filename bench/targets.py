"""What the benchmark measures: FileWallBall in production mode, the bare ceiling, and nginx."""

from __future__ import annotations

import os
import re
import secrets
import sys
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench import REPO_ROOT, ceiling
from bench.procs import BenchError, Managed, free_port, run, start, wait_http
from bench.storage import DISK, Bucket
from bench.system import filewallball_command

# High enough that wrk never meets a 429; the check itself still runs on every request
# (a Redis INCR per request, as in production), only its budget is out of reach.
RATE_LIMIT = "100000000/minute"

OURS = "ours"
# FileWallBall behind nginx, which sends whole downloads (X-Accel-Redirect).
BEHIND_NGINX = "behind-nginx"


def target_name(target: str, storage: str) -> str:
    """`ours` and `behind-nginx` on disk (as before S3 existed), `ours-s3`... on S3."""
    return target if storage == DISK else f"{target}-{storage}"


@dataclass(frozen=True)
class ServeOptions:
    """How `filewallball serve` runs: the same for FileWallBall and for the ceiling."""

    workers: int
    server: str | None  # `serve --server` when the command has that option, else None
    log_level: str

    def args(self, port: int) -> list[str]:
        server = ["--server", self.server] if self.server else []
        return ["--host", "127.0.0.1", "--port", str(port), "--workers", str(self.workers), *server]


def serve_server_option() -> tuple[bool, str | None]:
    """Whether `filewallball serve` has `--server`, and its default (parsed from --help)."""
    env = {**os.environ, "COLUMNS": "250", "NO_COLOR": "1", "TERM": "dumb"}
    help_text = run([filewallball_command(), "serve", "--help"], env=env).stdout
    match = re.search(r"--server\b(.*?)(?=\n\W*--|\Z)", help_text, re.DOTALL)
    if match is None:
        return False, None
    default = re.search(r"default:\s*([\w.-]+)", match.group(1))
    return True, default.group(1) if default else None


@dataclass
class Ours:
    """FileWallBall: PostgreSQL, Redis, N workers, every middleware, production defaults;
    its blobs on the local disk or in a bucket."""

    url: str
    managed: Managed
    env: dict[str, str]
    admin_key: str
    storage: str = DISK
    bucket: Bucket | None = None  # S3: its prefix in the SeaweedFS bucket
    key: str = ""
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def target(self) -> str:
        return target_name(OURS, self.storage)

    @property
    def behind_nginx(self) -> str:
        return target_name(BEHIND_NGINX, self.storage)

    @property
    def blob_dir(self) -> Path:
        return Path(self.env["FWB_DATA_DIR"]) / "blobs"

    @property
    def authorization(self) -> str:
        return f"Bearer {self.key}"

    def client(self, timeout: float = 60) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, timeout=timeout, headers={"authorization": self.authorization}
        )


def _bootstrap_key() -> str:
    return f"fwb_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"


def server_env(
    *,
    home: Path,
    database_url: str,
    redis_url: str,
    prefix: str,
    log_level: str,
    bucket: Bucket | None = None,
) -> dict[str, str]:
    """The environment of one FileWallBall (and of the ceiling, which ignores it): its folder,
    database, Redis prefix and, on S3, its bucket; nothing shared with another."""
    metrics = home / "prometheus"
    metrics.mkdir(parents=True, exist_ok=True)
    # The caller's own FWB_ settings (a clamd address, a data dir...) would change what is measured.
    inherited = {name: value for name, value in os.environ.items() if not name.startswith("FWB_")}
    python_path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    return {
        **inherited,
        "PYTHONPATH": python_path,
        "FWB_DATA_DIR": str(home / "data"),
        "FWB_DATABASE_URL": database_url,
        "FWB_AUTO_MIGRATE": "false",  # production: `filewallball migrate` runs first, as a Job
        "FWB_REDIS_URL": redis_url,
        "FWB_REDIS_PREFIX": prefix,
        "FWB_SECRET_KEY": secrets.token_urlsafe(32),
        "FWB_BOOTSTRAP_ADMIN_KEY": _bootstrap_key(),
        "FWB_RATE_LIMIT": RATE_LIMIT,
        "FWB_UPLOAD_RATE_LIMIT": RATE_LIMIT,
        "FWB_LOG_LEVEL": log_level,
        # Installs the CORS middleware too ("every middleware on"); wrk sends no Origin header,
        # so it only looks at each request, as it would for a program's requests in production.
        "FWB_CORS_ORIGINS": "https://app.example.org",
        # nginx in front (the behind-nginx downloads) may ask for X-Accel-Redirect answers;
        # wrk's direct requests send no X-Forwarded-For, so they are seen as before.
        "FWB_TRUSTED_PROXIES": "127.0.0.1/32",
        # Where the workers' metrics go (serve would make a temp dir of its own and leave it).
        "PROMETHEUS_MULTIPROC_DIR": str(metrics),
        # S3: FWB_S3_* and the test server's credentials (every blob in the bucket; the data
        # folder holds nothing but the metrics of workers and the like).
        **(bucket.env() if bucket else {}),
    }


def launch_ours(
    stack: ExitStack,
    home: Path,
    env: dict[str, str],
    serve: ServeOptions,
    *,
    storage: str = DISK,
    bucket: Bucket | None = None,
) -> Ours:
    """Migrate, start `filewallball serve`, without waiting for it: `wait_until_ready` does that."""
    command = filewallball_command()
    run([command, "migrate"], env=env)
    port = free_port()
    managed = start(
        target_name("filewallball", storage),
        [command, "serve", *serve.args(port)],
        env=env,
        log_path=home / "filewallball.log",
        cwd=REPO_ROOT,
    )
    stack.callback(managed.stop)
    url = f"http://127.0.0.1:{port}"
    admin_key = env["FWB_BOOTSTRAP_ADMIN_KEY"]
    return Ours(url, managed, env, admin_key=admin_key, storage=storage, bucket=bucket)


def wait_until_ready(ours: Ours) -> Ours:
    """Wait for /readyz, make an uploader key."""
    # Ready means every required dependency answers: PostgreSQL and the blob volume or bucket.
    wait_http(ours.managed, f"{ours.url}/readyz")
    # A program's key, not the operator's: the uploader role owns and reads its files.
    with httpx.Client(
        base_url=ours.url, timeout=30, headers={"authorization": f"Bearer {ours.admin_key}"}
    ) as admin:
        created = admin.post("/admin/keys", json={"name": "bench", "role": "uploader"})
        if created.status_code != 201:
            raise BenchError(f"could not create a key: {created.status_code} {created.text}")
        ours.key = str(created.json()["key"])
    ours.settings = {
        name: ("<secret>" if "KEY" in name else value)
        for name, value in ours.env.items()
        if name.startswith("FWB_")
    }
    return ours


def start_ceiling(
    stack: ExitStack, work: Path, env: dict[str, str], serve: ServeOptions
) -> tuple[str, Managed]:
    """The bare FastAPI app behind the same `serve` command and options (bench.ceiling_serve)."""
    port = free_port()
    managed = start(
        "ceiling",
        [sys.executable, "-m", "bench.ceiling_serve", *serve.args(port)],
        env=env,
        log_path=work / "ceiling.log",
        cwd=REPO_ROOT,
    )
    stack.callback(managed.stop)
    url = f"http://127.0.0.1:{port}"
    response = wait_http(
        managed, f"{url}{ceiling.PATH}", accept=lambda r: r.status_code in (200, 401, 404)
    )
    if response.status_code != 200 or response.json().get("framework") != "fastapi":
        raise BenchError(
            "the ceiling launcher served FileWallBall instead of bench.ceiling: "
            "`filewallball serve` no longer starts uvicorn.Config or granian.Granian"
        )
    return url, managed


NGINX_CONF = """\
# Generated by the FileWallBall benchmark (bench/targets.py); run as
#   nginx -p {prefix} -c {prefix}/nginx.conf -g 'daemon off;'
{user}worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;

events {{
    worker_connections 4096;
}}

http {{
    # One line per request to a file, as FileWallBall writes one access event per request.
    access_log {prefix}/access.log;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;

    server {{
        listen 127.0.0.1:{port};
        root {root};

        # GET /download/<id>: the same bytes as FileWallBall's /download/<id>
        location /download/ {{
        }}

        # PUT /put/<name>: WebDAV upload (ngx_http_dav_module), body spooled to a temp file
        # on the same filesystem, then renamed into place.
        location /put/ {{
            dav_methods PUT;
            create_full_put_path on;
            dav_access user:rw;
            client_max_body_size 2g;
            client_body_buffer_size 128k;
        }}
    }}
{front}}}
"""

# FileWallBall behind nginx, as the Kubernetes component deploys it: nginx sends downloads.
NGINX_FRONT_SNIPPET = REPO_ROOT / "infra/kustomize/components/nginx-front/filewallball.conf"
FRONT_CONF = """
    upstream {name} {{
        server {upstream};
        keepalive 32;
        keepalive_timeout 5s;
    }}

    server {{
        listen 127.0.0.1:{port};
        set $fwb_blobs {blobs};
        include {snippet};
    }}
"""


@dataclass
class Nginx:
    url: str
    managed: Managed
    root: Path
    config: str
    # Each FileWallBall behind this nginx (components/nginx-front), by its behind-nginx target.
    front_urls: dict[str, str] = field(default_factory=dict)

    @property
    def download_dir(self) -> Path:
        return self.root / "download"

    @property
    def put_dir(self) -> Path:
        return self.root / "put"


def _front(ours: Ours, prefix: Path) -> tuple[str, str]:
    """The server block of nginx in front of `ours`, and its URL."""
    upstream = target_name("filewallball", ours.storage).replace("-", "_")
    snippet = NGINX_FRONT_SNIPPET
    if upstream != "filewallball":
        # The snippet proxies to `upstream filewallball`; a second one needs a copy that names
        # its own upstream. On S3 the blobs have no path, so FileWallBall streams them itself.
        text, proxy = snippet.read_text(), "proxy_pass http://filewallball;"
        if proxy not in text:
            raise BenchError(f"{snippet} no longer says `{proxy}`")
        snippet = prefix / f"{upstream}.conf"
        snippet.write_text(text.replace(proxy, f"proxy_pass http://{upstream};"))
    port = free_port()
    block = FRONT_CONF.format(
        name=upstream,
        port=port,
        upstream=ours.url.removeprefix("http://"),
        blobs=f"{ours.blob_dir}/",
        snippet=snippet,
    )
    return block, f"http://127.0.0.1:{port}"


def start_nginx(stack: ExitStack, nginx: str, work: Path, workers: int, ours: list[Ours]) -> Nginx:
    prefix = work / "nginx"
    root = prefix / "root"
    for folder in (root / "download", root / "put", prefix / "client_body"):
        folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    # As root, nginx's workers would switch to `nobody`, who cannot read our 0700 temp dirs.
    user = "user root root;\n" if os.geteuid() == 0 else ""
    fronts = {server.behind_nginx: _front(server, prefix) for server in ours}
    config = NGINX_CONF.format(
        prefix=prefix,
        root=root,
        port=port,
        workers=workers,
        user=user,
        front="".join(block for block, _ in fronts.values()),
    )
    (prefix / "nginx.conf").write_text(config)
    command = [nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"]
    run([*command, "-t"])
    managed = start("nginx", command, env=dict(os.environ), log_path=prefix / "stderr.log")
    stack.callback(managed.stop)
    url = f"http://127.0.0.1:{port}"
    (root / "download" / "ready").write_bytes(b"ok")
    wait_http(managed, f"{url}/download/ready", timeout=20)
    return Nginx(url, managed, root, config, {name: url for name, (_, url) in fronts.items()})
