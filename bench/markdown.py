"""`python -m bench.markdown [results.json]`: a results file's table in Markdown (for the docs)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench import RESULTS_DIR
from bench.report import CAPTION, markdown


def main(argv: list[str]) -> int:
    path = Path(argv[0]) if argv else RESULTS_DIR / "latest.json"
    report = json.loads(path.read_text())
    machine, git, server = report["machine"], report["git"], report["server"]
    plan = report["plan"]
    storages = plan.get("storages", ["disk"])  # results written before S3 existed: disk
    blobs = " and ".join("S3 (SeaweedFS)" if s == "s3" else s for s in storages)
    print(
        f"{report['started_at'][:16].replace('T', ' ')} UTC, commit {str(git['commit'])[:7]}"
        f"{' + uncommitted src/ changes' if git.get('src_dirty') else ''}; "
        f"{machine['cores']} cores ({machine['cpu_model']}), load average "
        f"{machine['load_average_at_start'][0]:.1f} at start; "
        f"{server['program']}, {server['workers']} workers; blobs on {blobs}; "
        f"{plan['rounds']} rounds of "
        f"{plan['duration']:g} s{' (smoke)' if report['smoke'] else ''}.\n"
    )
    print(markdown(report["figures"]))
    print(f"\n{CAPTION[0].upper()}{CAPTION[1:]}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
