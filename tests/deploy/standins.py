"""Local stand-ins of the Dockerfile's two base images, made from Debian packages and PyPI.

The registries of the real ones (Docker Hub, ghcr.io) are unreachable here, so:
- the Python image is Debian bookworm from debootstrap (minbase) with Debian's python3.11 (the
  official image builds its own in /usr/local; the Dockerfile takes whichever is on PATH) and
  this machine's CA bundle (uv and apt inside the build then trust what this machine trusts);
- the uv image is the `uv` and `uvx` binaries of the uv wheel of the Dockerfile's UV_VERSION.

Both are root filesystem tarballs kept under ~/.cache/fwb-image-standins/<key>/, the key a hash
of everything that goes into them, so only the first run pays for debootstrap (about a minute).
Next to them each engine may keep its store (`engine_store`): the stand-ins already loaded and
the download caches of RUN --mount=type=cache, so that later runs build again without fetching
again. Folders of other keys are removed once no run uses them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import ssl
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("FWB_STANDIN_CACHE", Path.home() / ".cache" / "fwb-image-standins"))
SUITE = "bookworm"  # the suite of python:3.11-slim-bookworm
PACKAGES = ("python3.11", "ca-certificates")
RECIPE = 1  # bump when the way the stand-ins are made changes
# What the official python image sets (PATH, LANG), and the CA bundle's place for uv.
PYTHON_ENV = (
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG=C.UTF-8",
    "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
)


@dataclass(frozen=True)
class Standins:
    directory: Path
    python_env: tuple[str, ...] = PYTHON_ENV

    @property
    def key(self) -> str:
        return self.directory.name

    @property
    def python_tar(self) -> Path:
        return self.directory / "python.tar"

    @property
    def uv_tar(self) -> Path:
        return self.directory / "uv.tar"


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses for the suite (deb822 or one-line sources)."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        for block in text.split("\n\n"):  # deb822: one stanza per paragraph
            fields = dict(
                line.split(":", 1) for line in block.splitlines() if ":" in line and line[0] != "#"
            )
            suites = fields.get("Suites", "").split()
            if SUITE in suites and "main" in fields.get("Components", "").split():
                return fields["URIs"].split()[0].rstrip("/")
        for line in text.splitlines():  # one-line: deb [options] uri suite components...
            words = [word for word in line.split() if not word.startswith("[")]
            if len(words) >= 4 and words[0] == "deb" and words[2] == SUITE and "main" in words[3:]:
                return words[1].rstrip("/")
    return "http://deb.debian.org/debian"


def ca_bundle() -> Path:
    paths = ssl.get_default_verify_paths()
    for candidate in (os.environ.get("SSL_CERT_FILE"), paths.cafile, paths.openssl_cafile):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return Path("/etc/ssl/certs/ca-certificates.crt")


def unmount_under(path: Path) -> None:
    """Lazily unmount whatever is still mounted below path (a failed chroot's /proc, overlays),
    so that removing the folder never descends into a mounted filesystem."""
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mounts") as mounts:
        points = [line.split()[1] for line in mounts]
    for point in sorted(points, key=len, reverse=True):
        point = point.replace("\\040", " ")
        if point.startswith(prefix):
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def remove_tree(path: Path) -> None:
    unmount_under(path)
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One maker at a time: parallel test runs wait for the first one's tarballs."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _key(uv_version: str, mirror: str, ca: bytes) -> str:
    recipe = {
        "recipe": RECIPE,
        "suite": SUITE,
        "mirror": mirror,
        "packages": PACKAGES,
        "env": PYTHON_ENV,
        "uv": uv_version,
        "ca": hashlib.sha256(ca).hexdigest(),
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def _make_python(target: Path, mirror: str, ca: bytes, log: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix="rootfs-", dir=target.parent))
    try:
        rootfs = work / "rootfs"
        with log.open("ab") as output:
            subprocess.run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={','.join(PACKAGES)}",
                    SUITE,
                    str(rootfs),
                    mirror,
                ],
                stdout=output,
                stderr=subprocess.STDOUT,
                timeout=900,
                check=True,
            )
        # As slim as the official image: no downloaded packages, no package lists.
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (rootfs / leftover).glob("*"):
                if entry.is_file():
                    entry.unlink()
        (rootfs / "etc/ssl/certs/ca-certificates.crt").write_bytes(ca)
        unmount_under(rootfs)  # debootstrap unmounts its /proc and /sys, unless it failed
        partial = target.with_suffix(".partial")
        subprocess.run(
            ["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(partial), "."],
            capture_output=True,
            timeout=300,
            check=True,
        )
        partial.replace(target)
    finally:
        remove_tree(work)


def _make_uv(target: Path, uv: str, version: str) -> None:
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        subprocess.run(
            [uv, "pip", "install", "--quiet", "--no-deps", "--target", work, f"uv=={version}"],
            capture_output=True,
            timeout=300,
            check=True,
        )
        partial = target.with_suffix(".partial")
        with tarfile.open(partial, "w") as archive:
            for name in ("uv", "uvx"):  # at / as in ghcr.io/astral-sh/uv
                info = archive.gettarinfo(Path(work, "bin", name), arcname=name)
                info.mode, info.uid, info.gid, info.uname, info.gname = 0o755, 0, 0, "", ""
                with open(Path(work, "bin", name), "rb") as binary:
                    archive.addfile(info, binary)
        partial.replace(target)


def _prune_other_keys(current: Path) -> None:
    for directory in current.parent.iterdir():
        if directory == current or not (directory / "in-use.lock").exists():
            continue
        with open(directory / "in-use.lock") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # another run still uses it
            remove_tree(directory)


@contextlib.contextmanager
def standins(uv_version: str, uv: str) -> Iterator[Standins]:
    """The two stand-in tarballs, made now unless a previous run left them in the cache; in use
    (not pruned by other runs) until the block ends."""
    mirror = debian_mirror()
    ca = ca_bundle().read_bytes()
    found = Standins(directory=CACHE / _key(uv_version, mirror, ca))
    with _locked(CACHE):
        found.directory.mkdir(exist_ok=True)
        in_use = open(found.directory / "in-use.lock", "w")  # noqa: SIM115 - held until the end
        fcntl.flock(in_use, fcntl.LOCK_SH)
        try:
            _prune_other_keys(found.directory)
            if not found.python_tar.exists():
                _make_python(found.python_tar, mirror, ca, found.directory / "debootstrap.log")
            if not found.uv_tar.exists():
                _make_uv(found.uv_tar, uv, uv_version)
        except BaseException:
            in_use.close()
            raise
    with in_use:
        yield found


@contextlib.contextmanager
def engine_store(found: Standins, engine: str) -> Iterator[Path | None]:
    """The engine's lasting store next to the stand-ins, or None while another run holds it."""
    store = found.directory / engine
    store.mkdir(exist_ok=True)
    with open(found.directory / f"{engine}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None
            return
        yield store
