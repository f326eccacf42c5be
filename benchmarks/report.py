"""Results: one row per (tool, scenario, image), the ratios of medians, the stdout table, the JSON
document, and the optional PNG chart.

Units: MB is 10^6 bytes (throughput = bytes moved / median wall time; RSS = ``ru_maxrss`` KiB *
1024 / 10^6). A ratio is ociflow's median wall time over the other tool's, measured in the same
invocation: below 1 means ociflow is faster. For push of ``big`` the ratio to curl-put compares
throughputs instead (ociflow's MB/s over the single PUT's), since curl moves one blob only.
"""

from __future__ import annotations

import datetime
import importlib
import importlib.util
import json
import os
import platform
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.measure import Summary

OK, FAILED, NA = "ok", "failed", "n/a"
PYTHON_PEERS = ("oras-py", "python-dxf")


@dataclass
class Row:
    """The outcome of one (tool, scenario, image): ``summary`` is set when ``status`` is ok;
    ``reason`` says why a row is n/a or failed (the tool's stderr tail for a failure)."""

    tool: str
    scenario: str
    image: str
    status: str
    bytes: int
    summary: Summary | None = None
    reason: str = ""
    vs_skopeo: float | None = None

    @property
    def mb_per_s(self) -> float | None:
        if self.summary is None or self.summary.wall_median_s <= 0:
            return None
        return self.bytes / self.summary.wall_median_s / 1e6

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "tool": self.tool,
            "scenario": self.scenario,
            "image": self.image,
            "status": self.status,
            "bytes": self.bytes,
        }
        if self.summary is not None:
            s = self.summary
            doc |= {
                "runs": s.runs,
                "mb_per_s": _round(self.mb_per_s, 2),
                "wall_s": _round(s.wall_median_s, 4),
                "wall_runs_s": [_round(w, 4) for w in s.wall_all_s],
                "cpu_s": _round(s.cpu_median_s, 4),
                "rss_mb": _round(s.maxrss_kib * 1024 / 1e6, 1),
                "vs_skopeo": _round(self.vs_skopeo, 3),
            }
        if self.reason:
            doc["reason"] = self.reason
        return doc


@dataclass(frozen=True)
class Ratio:
    """ociflow against ``other`` for one scenario and image (``kind``: wall or throughput)."""

    scenario: str
    image: str
    other: str
    kind: str
    value: float

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "image": self.image,
            "other": self.other,
            "kind": self.kind,
            "value": round(self.value, 3),
        }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _wall(row: Row | None) -> float | None:
    if row is None or row.summary is None:
        return None
    return row.summary.wall_median_s


def compute_ratios(rows: Sequence[Row]) -> list[Ratio]:
    """Fill each ok row's ``vs_skopeo``; return ociflow's ratios against every peer."""
    by_key = {(r.tool, r.scenario, r.image): r for r in rows if r.status == OK}
    ratios: list[Ratio] = []
    for row in rows:
        skopeo = _wall(by_key.get(("skopeo", row.scenario, row.image)))
        wall = _wall(row)
        if wall is not None and skopeo:
            row.vs_skopeo = wall / skopeo
    for row in rows:
        wall = _wall(row)
        if row.tool != "ociflow" or wall is None:
            continue
        if row.vs_skopeo is not None:
            ratios.append(Ratio(row.scenario, row.image, "skopeo", "wall", row.vs_skopeo))
        peers = [
            (peer_wall, peer)
            for peer in PYTHON_PEERS
            if (peer_wall := _wall(by_key.get((peer, row.scenario, row.image))))
        ]
        if peers:
            peer_wall, peer = min(peers)
            ratios.append(Ratio(row.scenario, row.image, f"{peer} (faster Python peer)",
                                "wall", wall / peer_wall))  # fmt: skip
        curl = by_key.get(("curl-put", row.scenario, row.image))
        if curl is not None and curl.mb_per_s and row.mb_per_s:
            ratios.append(Ratio(row.scenario, row.image, "curl-put", "throughput",
                                row.mb_per_s / curl.mb_per_s))  # fmt: skip
    return ratios


# -- the table --------------------------------------------------------------------------------

COLUMNS = ("tool", "scenario", "image", "MB/s", "wall s", "CPU s", "RSS MB", "vs skopeo")


def table(rows: Sequence[Row], ratios: Sequence[Ratio]) -> str:
    """The results as aligned text: one line per row, then notes and ociflow's ratios."""
    lines: list[list[str]] = [list(COLUMNS)]
    notes: list[str] = []
    for row in rows:
        cells = [row.tool, row.scenario, row.image]
        if row.summary is not None:
            s = row.summary
            cells += [
                f"{row.mb_per_s:.1f}" if row.mb_per_s is not None else "-",
                f"{s.wall_median_s:.3f}",
                f"{s.cpu_median_s:.3f}",
                f"{s.maxrss_kib * 1024 / 1e6:.1f}",
                f"{row.vs_skopeo:.2f}x" if row.vs_skopeo is not None else "-",
            ]
        else:
            notes.append(f"[{len(notes) + 1}] {row.tool} {row.scenario} {row.image}: "
                         f"{row.status}: {row.reason}")  # fmt: skip
            cells += [f"{row.status} [{len(notes)}]", "", "", "", ""]
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    out = []
    for n, line in enumerate(lines):
        text = "  ".join(
            cell.ljust(width) if i < 3 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        )
        out.append(text.rstrip())
        if n == 0:
            out.append("-" * len(out[0]))
    if ratios:
        out += ["", "ociflow vs others (ratio of medians; wall: lower is better, "
                    "throughput: higher is better):"]  # fmt: skip
        out += [f"  {r.scenario} {r.image}: vs {r.other}: {r.value:.2f} ({r.kind})" for r in ratios]
    if notes:
        out += ["", "Notes:"]
        for note in notes:
            first, *rest = note.splitlines() or [""]
            out.append("  " + first)
            out += ["      " + line for line in rest[-8:]]
    return "\n".join(out)


# -- the environment --------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory and OS of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib: float | None = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 1024**2, 1)
                break
    except (OSError, ValueError):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "os": platform.platform(),
    }


def git_revision(root: Path) -> str | None:
    """The repository's commit, with ``-dirty`` when the tree has changes."""
    try:
        done = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=root, capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def registry_version() -> str | None:
    try:
        done = subprocess.run(
            ["docker-registry", "--version"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    words = done.stdout.split()
    return words[-1] if words else None


def document(
    *,
    config: dict[str, Any],
    machine: dict[str, Any],
    versions: dict[str, str | None],
    images: dict[str, dict[str, Any]],
    rows: Iterable[Row],
    ratios: Iterable[Ratio],
    started: datetime.datetime,
) -> dict[str, Any]:
    """The JSON document written by ``--json``."""
    return {
        "format": "ociflow-bench/1",
        "date": started.isoformat(timespec="seconds"),
        "machine": machine,
        "versions": versions,
        "config": config,
        "images": images,
        "results": [row.to_json() for row in rows],
        "ratios": [ratio.to_json() for ratio in ratios],
    }


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)


# -- the chart --------------------------------------------------------------------------------


def matplotlib_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def write_png(path: Path, rows: Sequence[Row], title: str) -> None:
    """A grouped bar chart of MB/s, one group per scenario and image, one bar per tool.

    Requires matplotlib (checked by the caller); imported here so the harness runs without it.
    """
    matplotlib: Any = importlib.import_module("matplotlib")
    matplotlib.use("Agg")  # no display: write a file only
    pyplot: Any = importlib.import_module("matplotlib.pyplot")
    groups = list(dict.fromkeys((r.scenario, r.image) for r in rows))
    tools = list(dict.fromkeys(r.tool for r in rows))
    values = {(r.tool, r.scenario, r.image): r.mb_per_s for r in rows}
    width = 0.8 / max(len(tools), 1)
    figure, axes = pyplot.subplots(figsize=(max(6.0, 1.1 * len(groups)), 4.5))
    for n, tool in enumerate(tools):
        # No bar at all for failed and n/a rows: a zero would read as a measurement.
        bars = [
            (g + n * width, value)
            for g, (s, i) in enumerate(groups)
            if (value := values.get((tool, s, i)))
        ]
        axes.bar([x for x, _ in bars], [y for _, y in bars], width, label=tool)
    axes.set_xticks([g + width * (len(tools) - 1) / 2 for g in range(len(groups))])
    axes.set_xticklabels([f"{s}\n{i}" for s, i in groups])
    # Log scale: the small image moves ~1 MB/s and the big one hundreds; both must be readable.
    axes.set_yscale("log")
    axes.set_ylabel("MB/s, log scale (higher is better)")
    axes.set_title(title)
    axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    pyplot.close(figure)
