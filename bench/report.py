"""From raw runs to figures: medians, min-max, paired ratios, targets, the table and the JSON."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from rich.console import Console
from rich.table import Table

from bench import KiB, size_label
from bench.memory import MemoryResult
from bench.scenarios import LARGE_DOWNLOAD, Measurement, Plan
from bench.storage import DISK, NAMES
from bench.targets import BEHIND_NGINX, OURS, target_name
from bench.wrk import WrkResult

Op = Literal[">=", "<", "=="]
Aggregate = Literal["median", "total", "max"]


@dataclass(frozen=True)
class Check:
    """A target of issue 7, on the row's reported value or on its median ratio."""

    text: str
    on: Literal["value", "ratio"]
    op: Op
    threshold: float
    # The (case, target) a ratio compares with, when it is not the row's reference: an S3 row's
    # reference is the same row on disk, its targets still compare with nginx or the ceiling.
    against: tuple[str, str] | None = None

    def passes(self, value: float) -> bool:
        if self.op == ">=":
            return value >= self.threshold
        if self.op == "<":
            return value < self.threshold
        return value == self.threshold


@dataclass(frozen=True)
class Row:
    label: str
    unit: str
    case: str
    metric: str
    target: str = "ours"
    reference: tuple[str, str] | None = None  # (case, target) measured alongside
    # How the table names the reference, when its target's name would not say (another case
    # of FileWallBall's own).
    reference_name: str | None = None
    checks: tuple[Check, ...] = ()
    # What the row reports of its per-round values: the median; the total of a count (not 201s,
    # every one counts); the worst round (RSS growth: the target holds for every upload).
    aggregate: Aggregate = "median"


def metric(result: WrkResult | MemoryResult, name: str) -> float:
    if isinstance(result, MemoryResult):
        return float(getattr(result, name))
    if name == "p99_ms":
        return result.latency_ms["p99"]
    if name == "not_201":
        # Every answer that was not a 201, and every request lost to a socket error or timeout.
        return float(result.requests - result.statuses.get("201", 0) + sum(result.errors.values()))
    return float(getattr(result, name))


def rows_for(plan: Plan) -> list[Row]:
    """Every row of the table: FileWallBall's rows once per storage (the S3 row right after its
    disk row, with the disk figure as its reference), the ceiling's once."""
    rows: list[Row] = []
    beside_disk = DISK in plan.storages
    for row in _rows(plan):
        if row.target == "ceiling":
            rows.append(row)
            continue
        for storage in plan.storages:
            rows.append(row if storage == DISK else _on(row, storage, beside_disk=beside_disk))
    return rows


def _on(row: Row, storage: str, *, beside_disk: bool) -> Row:
    """The same row for FileWallBall with its blobs on `storage`: its reference is the disk row,
    unless it is another case of FileWallBall's own, which is then on `storage` too."""
    checks = tuple(
        replace(check, against=check.against or row.reference) if check.on == "ratio" else check
        for check in row.checks
    )
    if row.reference and row.reference[1] == OURS:
        reference: tuple[str, str] | None = (row.reference[0], target_name(OURS, storage))
    else:
        reference = (row.case, row.target) if beside_disk else row.reference
    return replace(
        row,
        label=f"{row.label} on {NAMES[storage]}",
        target=target_name(row.target, storage),
        reference=reference,
        checks=checks,
    )


def _rows(plan: Plan) -> list[Row]:
    """The rows of FileWallBall on disk and of the ceiling."""
    rows: list[Row] = []
    scenarios = plan.scenarios
    if "a" in scenarios:
        ceiling = ("e", "ceiling") if "e" in scenarios else None
        rows += [
            Row(
                "a. GET /files/{id}",
                "req/s",
                "a",
                "rps",
                reference=ceiling,
                checks=(
                    Check(">= 3,000 req/s", "value", ">=", 3000),
                    *((Check(">= 0.30 x ceiling", "ratio", ">=", 0.3),) if ceiling else ()),
                ),
            ),
            Row(
                "a. GET /files/{id} p99",
                "ms",
                "a",
                "p99_ms",
                reference=ceiling,
                checks=(Check("< 50 ms", "value", "<", 50),),
            ),
        ]
    if "e" in scenarios:
        rows += [
            Row("e. bare FastAPI JSON (ceiling)", "req/s", "e", "rps", target="ceiling"),
            Row("e. bare FastAPI JSON p99", "ms", "e", "p99_ms", target="ceiling"),
        ]
    if "b" in scenarios:
        smallest, largest = min(plan.download_sizes), max(plan.download_sizes)
        for size in plan.download_sizes:
            case = f"b-{size_label(size)}"
            # Small files are about requests per second, large ones about bytes per second.
            by_requests = size <= 64 * KiB
            checks: tuple[Check, ...] = ()
            if size == smallest and by_requests:
                checks += (Check(">= 2,000 req/s", "value", ">=", 2000),)
            if size == largest and not by_requests:
                checks += (Check(">= 0.70 x nginx", "ratio", ">=", 0.7),)
            connections = f" ({plan.large_connections} conns)" if size >= LARGE_DOWNLOAD else ""
            rows.append(
                Row(
                    f"b. download {size_label(size)}{connections}",
                    "req/s" if by_requests else "MB/s",
                    case,
                    "rps" if by_requests else "mb_per_s",
                    reference=(case, "nginx"),
                    checks=checks,
                )
            )
            if size == largest and not by_requests:
                rows.append(
                    Row(
                        f"b. download {size_label(size)}{connections} behind nginx",
                        "MB/s",
                        case,
                        "mb_per_s",
                        target=BEHIND_NGINX,
                        reference=(case, "nginx"),
                        checks=checks,
                    )
                )
    if "c" in scenarios:
        for size in plan.upload_sizes:
            case = f"c-{size_label(size)}"
            name = f"c. upload {size_label(size)} x{plan.upload_connections}"
            rows += [
                Row(
                    name,
                    "MB/s",
                    case,
                    "mb_per_s",
                    reference=(case, "nginx"),
                    checks=(Check(">= 0.50 x nginx PUT", "ratio", ">=", 0.5),),
                ),
                Row(
                    f"{name} p99",
                    "ms",
                    case,
                    "p99_ms",
                    reference=(case, "nginx"),
                    checks=(Check("< 3,000 ms", "value", "<", 3000),),
                ),
                Row(
                    f"{name} not 201",
                    "count",
                    case,
                    "not_201",
                    reference=(case, "nginx"),
                    checks=(Check("every one 201", "value", "==", 0),),
                    aggregate="total",
                ),
            ]
    if "d" in scenarios:
        case = f"d-{size_label(plan.memory_size)}"
        rows += [
            Row(
                f"d. {size_label(plan.memory_size)} upload: RSS growth",
                "MiB",
                case,
                "rss_growth_total_mib",
                checks=(Check("< 100 MiB", "value", "<", 100),),
                aggregate="max",
            ),
            Row(f"d. {size_label(plan.memory_size)} upload", "MB/s", case, "mb_per_s"),
        ]
    if "f" in scenarios:
        label = size_label(plan.resumable_size)
        post, tus = f"f-post-{label}", f"f-tus-{label}"
        patches = f"{size_label(plan.resumable_patch_bytes)} PATCHes"
        rows += [
            Row(f"f. {label} upload: POST /upload", "MB/s", post, "mb_per_s"),
            Row(
                f"f. {label} upload: tus, {patches}",
                "MB/s",
                tus,
                "mb_per_s",
                reference=(post, OURS),
                reference_name="POST",
            ),
        ]
    return rows


def _stats(values: Sequence[float], aggregate: Aggregate = "median") -> dict[str, Any]:
    """Median, min, max (and total) of per-round values; `value` is what the row reports."""
    if not values:
        return {"values": [], "value": None, "median": None, "min": None, "max": None}
    summary: dict[str, Any] = {
        "values": list(values),
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "total": sum(values),
    }
    summary["value"] = summary[aggregate]
    return summary


def _series(measurements: list[Measurement], case: str, target: str, name: str) -> dict[int, float]:
    return {
        m.round: metric(m.result, name)
        for m in measurements
        if m.case == case and m.target == target and not _no_latency(m.result, name)
    }


def _no_latency(result: WrkResult | MemoryResult, name: str) -> bool:
    """A run that completed no request measured no latency (wrk prints 0): not a p99 of 0."""
    return name == "p99_ms" and isinstance(result, WrkResult) and result.requests == 0


def _paired(ours: dict[int, float], reference: dict[int, float]) -> dict[str, Any]:
    """Ratios of two series, round by round: each compares two runs made side by side."""
    ratios = [ours[n] / reference[n] for n in sorted(ours) if reference.get(n)]
    return _stats([round(r, 4) for r in ratios])


def figures(plan: Plan, measurements: list[Measurement]) -> list[dict[str, Any]]:
    """Every row of the table, with its raw values per round, as the JSON stores them."""
    out: list[dict[str, Any]] = []
    for row in rows_for(plan):
        ours = _series(measurements, row.case, row.target, row.metric)
        figure: dict[str, Any] = {
            "label": row.label,
            "unit": row.unit,
            "case": row.case,
            "target": row.target,
            "metric": row.metric,
            "aggregate": row.aggregate,
            **_stats(list(ours.values()), row.aggregate),
            "reference": None,
            "ratio": None,
            "checks": [],
        }
        if row.reference:
            ref_case, ref_target = row.reference
            reference = _series(measurements, ref_case, ref_target, row.metric)
            figure["reference"] = {
                "case": ref_case,
                "target": ref_target,
                "name": row.reference_name,
                **_stats(list(reference.values()), row.aggregate),
            }
            if row.unit in ("req/s", "MB/s"):
                figure["ratio"] = _paired(ours, reference)
        for check in row.checks:
            entry: dict[str, Any] = {"target": check.text}
            if check.on == "ratio":
                against = check.against or row.reference
                ratio = figure["ratio"]
                if against is None:
                    ratio = None
                elif against != row.reference:
                    ratio = _paired(ours, _series(measurements, *against, row.metric))
                entry["against"] = against[1] if against else None
                value = ratio["median"] if ratio else None
            else:
                value = figure["value"]
            entry |= {"value": value, "passed": value is not None and check.passes(float(value))}
            figure["checks"].append(entry)
        out.append(figure)
    return out


AGGREGATE_NAMES = {"total": "total", "max": "worst"}


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if float(value).is_integer() and abs(value) < 100:
        return f"{value:.0f}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _range(summary: dict[str, Any] | None) -> str:
    if not summary or summary["min"] is None:
        return "-"
    return f"{_number(summary['min'])}-{_number(summary['max'])}"


COLUMNS = (
    ("figure", "left"),
    ("unit", "left"),
    ("value", "right"),
    ("min-max", "right"),
    ("reference", "right"),
    ("ratio (min-max)", "right"),
    ("target", "left"),
    ("", "center"),
)
CAPTION = (
    "value: the median of the rounds unless marked (total) or (worst); "
    "reference: the same figure of nginx or the ceiling (on S3: of the same row on disk, when "
    "disk ran too; its targets still compare with nginx or the ceiling), or of POST /upload on "
    "the same storage (f); "
    "ratio: value / reference, paired by round, median (min-max)"
)
# An S3 row's reference is FileWallBall's own run on disk.
REFERENCE_NAMES = {OURS: "disk", BEHIND_NGINX: "disk behind nginx"}


def _reference_name(reference: dict[str, Any]) -> str:
    # JSON written before scenario f has no "name".
    named: str | None = reference.get("name")
    return named or REFERENCE_NAMES.get(reference["target"], reference["target"])


def cells(row: dict[str, Any], *, markup: bool) -> list[str]:
    """One table row as text; `markup` colours pass/FAIL for the terminal."""
    reference, ratio, aggregate = row["reference"], row["ratio"], row["aggregate"]
    verdicts = [
        ("[green]pass[/]" if markup else "pass")
        if c["passed"]
        else ("[red]FAIL[/]" if markup else "FAIL")
        for c in row["checks"]
    ]
    return [
        row["label"],
        row["unit"] + ("" if aggregate == "median" else f" ({AGGREGATE_NAMES[aggregate]})"),
        _number(row["value"]),
        _range(row),
        (f"{_reference_name(reference)} {_number(reference['value'])}" if reference else ""),
        f"{ratio['median']:.2f} ({_range(ratio)})" if ratio and ratio["median"] else "",
        "; ".join(c["target"] for c in row["checks"]),
        " ".join(verdicts),
    ]


def table(rows: list[dict[str, Any]], *, title: str) -> Table:
    grid = Table(title=title, title_justify="left", caption=CAPTION, caption_justify="left")
    for name, justify in COLUMNS:
        grid.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        grid.add_row(*cells(row, markup=True))
    return grid


def markdown(rows: list[dict[str, Any]]) -> str:
    """The same table in Markdown, for docs/performance.md."""
    align = {"left": ":---", "right": "---:", "center": ":---:"}
    lines = [
        "| " + " | ".join(name or "pass" for name, _ in COLUMNS) + " |",
        "|" + "|".join(align[justify] for _, justify in COLUMNS) + "|",
    ]
    for row in rows:
        text = [cell.replace("|", "\\|") for cell in cells(row, markup=False)]
        lines.append("| " + " | ".join(text) + " |")
    return "\n".join(lines)


def print_report(
    console: Console,
    rows: list[dict[str, Any]],
    *,
    smoke: bool,
    rounds: int,
    storages: Sequence[str] = (DISK,),
) -> None:
    title = f"FileWallBall vs nginx and the FastAPI ceiling: medians of {rounds} round(s)"
    title += f"; blobs on {' and '.join(NAMES[s] for s in storages)}"
    if smoke:
        title += " [yellow](smoke: tiny sizes, targets informational only)[/]"
    console.print(table(rows, title=title))
