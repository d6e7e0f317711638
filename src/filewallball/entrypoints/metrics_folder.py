"""The folder where the workers of `filewallball serve --workers N` write their metrics.

prometheus_client's multiprocess mode: each process writes its values to its own files in
PROMETHEUS_MULTIPROC_DIR and /metrics adds up every file. prometheus_client reads that
variable once, when it is imported: a process that imported it before the variable was set
keeps its metrics in memory for good, and so do the workers granian forks from it (their
/metrics then read an empty folder). So `prepare` runs before anything imports it, and says so
loudly if something did.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"
_PREFIX = "fwb-metrics-"
# Our folders carry the serving process's pid: fwb-metrics-<pid>-<random>.
_OURS = re.compile(rf"^{_PREFIX}(\d+)-")
# prometheus_client's files: <type>[_<mode>]_<pid>.db
_VALUE_FILE = re.compile(r"^(?:counter|gauge_\w+|histogram|summary)_(\d+)\.db$")


def prepare(workers: int) -> Path | None:
    """The metrics folder for this start (None: one worker, metrics in memory).

    A folder of our own is new at each start and removed when the process exits; one the
    operator named in PROMETHEUS_MULTIPROC_DIR is kept, emptied of an earlier run's values.
    """
    given = os.environ.get(ENV)
    if given:
        folder = Path(given)
        _empty(folder)
        return folder
    if workers <= 1:
        return None
    if "prometheus_client" in sys.modules:
        raise RuntimeError(
            "prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set: "
            "the workers' metrics would stay in memory and /metrics would be empty"
        )
    temp = Path(tempfile.gettempdir())
    _remove_abandoned(temp)
    folder = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=temp))
    os.environ[ENV] = str(folder)
    atexit.register(_remove, folder, os.getpid())
    return folder


def forget_dead_processes(folder: Path) -> None:
    """prometheus_client's bookkeeping for workers that died (a respawned granian worker).

    Their counters and histograms stay, so totals never go down; their live gauges go.
    """
    from prometheus_client.multiprocess import mark_process_dead

    pids = {int(m[1]) for p in folder.iterdir() if (m := _VALUE_FILE.match(p.name))}
    for pid in pids - {os.getpid()}:
        if not _alive(pid):
            mark_process_dead(pid, str(folder))  # type: ignore[no-untyped-call]


def _remove(folder: Path, owner: int) -> None:
    if os.getpid() == owner:  # not in a forked worker that happens to run atexit hooks
        shutil.rmtree(folder, ignore_errors=True)


def _remove_abandoned(temp: Path) -> None:
    """Folders left by a start that was killed (SIGKILL, OOM) before it could remove its own."""
    for path in temp.glob(f"{_PREFIX}*"):
        match = _OURS.match(path.name)
        # Our own pid too: in a restarted container every start is pid 1.
        if match and (int(match[1]) == os.getpid() or not _alive(int(match[1]))):
            shutil.rmtree(path, ignore_errors=True)


def _empty(folder: Path) -> None:
    """prometheus_client asks for the folder to be wiped between runs: an earlier run's values
    would be added to this one's."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in folder.iterdir():
        if _VALUE_FILE.match(path.name):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True
