"""The throughput benchmark harness: ``python -m benchmarks.run`` from the repository root.

Generates the benchmark images (``bench_data/generate.py``) into a work directory on tmpfs,
starts its own distribution registries on loopback, seeds the source registry with skopeo, then
measures every (scenario, image) with every tool: runs interleaved (A B A B …), one warm-up run
each, then ``--runs`` measured runs; each run a child process on a fresh destination (a new
layout directory, or a new repository on a newly started registry). It reports the median wall
time, MB/s, median CPU time and peak RSS, and ociflow's ratios of medians against each peer, as
a table on stdout and a JSON file. A failing tool becomes a "failed" row and the run goes on;
registries are always stopped and the work directory always removed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import platform
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from bench_data.generate import generate
from benchmarks import registries
from benchmarks.checks import check
from benchmarks.measure import Measurement, Summary, run_measured
from benchmarks.peers.graph import read_layout
from benchmarks.registries import BenchError
from benchmarks.report import (
    FAILED,
    NA,
    OK,
    Row,
    compute_ratios,
    document,
    git_revision,
    machine_info,
    matplotlib_available,
    registry_version,
    table,
    write_json,
    write_png,
)
from benchmarks.startup import describe, measure_startup
from benchmarks.tools import (
    IMAGES,
    REPO_ROOT,
    SCENARIOS,
    Image,
    Job,
    LayoutRef,
    RemoteRef,
    Tool,
    all_tools,
)
from tests.registry_server import RegistryServer

TAG = "bench"
DEFAULT_TOOLS = ("ociflow", "skopeo", "oras-py", "python-dxf", "curl-put")
SMOKE_TOOLS = ("ociflow", "skopeo", "curl-put")
DEFAULT_JSON = REPO_ROOT / "bench_results" / "results.json"


@dataclass(frozen=True)
class Settings:
    images: tuple[str, ...]
    scenarios: tuple[str, ...]
    tools: tuple[str, ...]
    runs: int
    warmup: int
    big_mib: int
    typical_mb: float
    timeout: float
    workdir: Path
    json: Path
    png: Path | None
    ociflow_args: tuple[str, ...]
    smoke: bool


def _names(allowed: Sequence[str]) -> Any:
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(n.strip() for n in text.split(",") if n.strip())
        unknown = [n for n in names if n not in allowed]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(unknown) or 'empty list'}; choose from {','.join(allowed)}"
            )
        return names

    return parse


def _default_workdir() -> Path:
    shm = Path("/dev/shm")
    if shm.is_dir() and shutil.disk_usage(shm).free > 0:
        return shm / "ociflow-bench"
    return Path(tempfile.gettempdir()) / "ociflow-bench"


def parse_args(argv: Sequence[str] | None) -> Settings:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--images", type=_names(IMAGES), help=f"default {','.join(IMAGES)}")
    parser.add_argument(
        "--scenarios", type=_names(SCENARIOS), help=f"default {','.join(SCENARIOS)}"
    )
    parser.add_argument(
        "--tools",
        type=_names(DEFAULT_TOOLS),
        help=f"default {','.join(DEFAULT_TOOLS)} (Python peers when installed)",
    )
    parser.add_argument("--runs", type=int, help="measured runs per tool (default 5)")
    parser.add_argument("--warmup", type=int, help="unmeasured runs per tool first (default 1)")
    parser.add_argument("--big-mib", type=int, help="size of the big image's layer (default 512)")
    parser.add_argument("--typical-mb", type=float, help="size of the typical image (default 100)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="results file")
    parser.add_argument("--png", type=Path, help="bar chart (needs matplotlib)")
    parser.add_argument(
        "--workdir", type=Path, default=_default_workdir(), help="scratch space (tmpfs)"
    )
    parser.add_argument(
        "--ociflow-args", default="", help='extra ociflow copy options, e.g. "--jobs 8"'
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny images, 1 run, no warm-up, ociflow + skopeo (+ curl-put): a CI check",
    )
    args = parser.parse_args(argv)

    def pick(value: Any, smoke: Any, normal: Any) -> Any:
        return value if value is not None else (smoke if args.smoke else normal)

    settings = Settings(
        images=pick(args.images, IMAGES, IMAGES),
        scenarios=pick(args.scenarios, SCENARIOS, SCENARIOS),
        tools=pick(args.tools, SMOKE_TOOLS, DEFAULT_TOOLS),
        runs=pick(args.runs, 1, 5),
        warmup=pick(args.warmup, 0, 1),
        big_mib=pick(args.big_mib, 2, 512),
        typical_mb=pick(args.typical_mb, 2.0, 100.0),
        timeout=args.timeout,
        workdir=args.workdir,
        json=args.json,
        png=args.png,
        ociflow_args=tuple(args.ociflow_args.split()),
        smoke=args.smoke,
    )
    if settings.runs < 1 or settings.warmup < 0 or settings.big_mib < 1:
        parser.error("--runs and --big-mib must be at least 1, --warmup at least 0")
    return settings


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextmanager
def workspace(base: Path) -> Iterator[Path]:
    """A fresh directory under ``base`` for this invocation, removed with everything in it;
    ``base`` too when this invocation created it."""
    created = not base.exists()
    base.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=base))
    try:
        yield run_dir
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):
                base.rmdir()


def filesystem_type(path: Path) -> str | None:
    """The type of the filesystem holding ``path`` (``tmpfs`` is what we want)."""
    best, fstype = "", None
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    target = str(path.resolve())
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        mount = fields[1]
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, fstype = mount, fields[2]
    return fstype


def make_images(settings: Settings, run_dir: Path) -> dict[str, Image]:
    images: dict[str, Image] = {}
    for name in settings.images:
        layout = run_dir / "images" / name
        _log(f"generating {name} ...")
        summary = generate(
            name, layout, tag=TAG, big_mib=settings.big_mib, typical_mb=settings.typical_mb
        )
        graph = read_layout(layout, TAG)
        images[name] = Image(
            name=name,
            layout=layout,
            tag=TAG,
            root=summary["root"],
            media_type=summary["media_type"],
            bytes=int(summary["bytes"]),
            blobs=int(summary["blobs"]),
            content=tuple(graph.blobs),
        )
    return images


class Bench:
    """Runs the matrix against one source registry; each run gets its own destination."""

    def __init__(self, settings: Settings, run_dir: Path, source: str) -> None:
        self.settings = settings
        self.run_dir = run_dir
        self.source = source  # host:port of the seeded source registry
        self.counter = 0

    def source_ref(self, image: Image) -> RemoteRef:
        return RemoteRef(self.source, f"bench/{image.name}", TAG)

    @contextmanager
    def _destination(self, scenario: str, n: int) -> Iterator[str | None]:
        if scenario == "pull":
            yield None
            return
        with registries.registry(self.run_dir / "dst" / str(n)) as server:
            yield server.address

    def run_once(self, tool: Tool, scenario: str, image: Image) -> tuple[Measurement | None, str]:
        """One run on a fresh destination: the measurement, or None and what went wrong."""
        self.counter += 1
        n = self.counter
        name = f"{image.name}-{tool.name}-{n}"
        out = self.run_dir / "out" / name
        scratch = self.run_dir / "scratch" / name
        # The parent must exist (skopeo refuses an oci: path whose parent is missing); the
        # layout directory itself must not, so that every tool starts from nothing.
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._destination(scenario, n) as address:
                src: RemoteRef | LayoutRef
                dst: RemoteRef | LayoutRef
                if scenario == "pull":
                    src, dst = self.source_ref(image), LayoutRef(out, TAG)
                else:
                    assert address is not None
                    dst = RemoteRef(address, f"{scenario}/{name}", TAG)
                    if scenario == "push":
                        src = LayoutRef(image.layout, image.tag)
                    else:
                        src = self.source_ref(image)
                job = Job(scenario, image, src, dst, scratch)
                argv = tool.command(job)
                measurement = run_measured(
                    argv,
                    stderr_path=self.run_dir / f"stderr-{n}",
                    timeout=self.settings.timeout,
                    env=tool.env(),
                    cwd=REPO_ROOT,
                )
                if measurement.timed_out:
                    failure = f"timed out after {self.settings.timeout:g} s"
                    return None, f"{failure}\n{measurement.stderr_tail}"
                if measurement.returncode != 0:
                    failure = f"exit code {measurement.returncode}"
                    return None, f"{failure}\n{measurement.stderr_tail}"
                problem = check(tool, job)
                if problem:
                    return None, f"output check: {problem}"
                return measurement, ""
        except (BenchError, OSError) as exc:
            return None, f"harness: {exc}"
        finally:
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(scratch, ignore_errors=True)

    def measure(self, scenario: str, image: Image, tools: Sequence[Tool]) -> list[Row]:
        """Interleaved runs of ``tools`` on one scenario and image: warm-ups, then measured."""
        measured: dict[str, list[Measurement]] = {t.name: [] for t in tools}
        failed: dict[str, str] = {}
        warmup, runs = self.settings.warmup, self.settings.runs
        for round_ in range(warmup + runs):
            label = "warm-up" if round_ < warmup else f"run {round_ - warmup + 1}/{runs}"
            for tool in tools:
                if tool.name in failed:
                    continue
                measurement, problem = self.run_once(tool, scenario, image)
                what = f"  {scenario} {image.name} {tool.name} {label}"
                if measurement is None:
                    failed[tool.name] = problem
                    _log(f"{what}: FAILED {problem.splitlines()[0]}")
                    continue
                _log(f"{what}: {measurement.wall_s:.3f} s")
                if round_ >= warmup:
                    measured[tool.name].append(measurement)
        rows = []
        for tool in tools:
            row = Row(tool.name, scenario, image.name, OK, tool.payload_bytes(image))
            if tool.name in failed:
                row.status, row.reason = FAILED, failed[tool.name]
            else:
                row.summary = Summary.of(measured[tool.name])
            rows.append(row)
        return rows


def seed_source(source: RegistryServer, images: dict[str, Image], timeout: float) -> dict[str, str]:
    """Push every image to ``bench/<name>:bench``; return the images that failed, with why."""
    errors: dict[str, str] = {}
    for image in images.values():
        _log(f"seeding {image.name} ...")
        repo = f"bench/{image.name}"
        try:
            registries.seed(source, image.layout, TAG, repo, timeout)
        except BenchError as exc:
            errors[image.name] = str(exc)
            continue
        if registries.manifest_digest(source.address, repo, TAG) != image.root:
            errors[image.name] = "the seeded tag has another root digest"
    return errors


def run_matrix(
    settings: Settings, run_dir: Path, images: dict[str, Image], tools: Sequence[Tool]
) -> list[Row]:
    """Every scenario, image and tool; rows ordered by scenario, image, then tool."""
    rows: list[Row] = []
    with registries.registry(run_dir / "src") as source:
        seed_errors: dict[str, str] = {}
        if {"pull", "copy"} & set(settings.scenarios):
            seed_errors = seed_source(source, images, settings.timeout)
        bench = Bench(settings, run_dir, source.address)
        missing = {tool.name: tool.missing() for tool in tools}
        for scenario in settings.scenarios:
            for image in images.values():
                runnable: list[Tool] = []
                for tool in tools:
                    if not tool.applies(scenario, image):
                        continue
                    row = Row(tool.name, scenario, image.name, NA, tool.payload_bytes(image))
                    if reason := missing[tool.name] or tool.unsupported(scenario, image):
                        row.reason = reason
                        rows.append(row)
                    elif scenario != "push" and image.name in seed_errors:
                        row.status = FAILED
                        row.reason = f"source not seeded: {seed_errors[image.name]}"
                        rows.append(row)
                    else:
                        runnable.append(tool)
                names = ", ".join(t.name for t in runnable) or "nothing to run"
                _log(f"{scenario} {image.name}: {names}")
                rows += bench.measure(scenario, image, runnable)
    order = {name: n for n, name in enumerate(settings.tools)}
    rows.sort(
        key=lambda r: (
            settings.scenarios.index(r.scenario),
            settings.images.index(r.image),
            order[r.tool],
        )
    )
    return rows


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Turn a kill into SystemExit so the finally blocks stop the registries and clean up.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 when the harness completed (tool failures are rows), 1 otherwise."""
    settings = parse_args(argv)
    started = datetime.datetime.now(datetime.UTC)
    known = all_tools(settings.ociflow_args)
    tools = [known[name] for name in settings.tools]
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        with workspace(settings.workdir) as run_dir:
            fstype = filesystem_type(run_dir)
            if fstype != "tmpfs":
                _log(f"note: {run_dir} is on {fstype or 'an unknown filesystem'}, not tmpfs")
            images = make_images(settings, run_dir)
            rows = run_matrix(settings, run_dir, images, tools)
    except BenchError as exc:
        _log(f"benchmarks: error: {exc}")
        return 1
    except KeyboardInterrupt:
        _log("benchmarks: interrupted; registries stopped and work directory removed")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    ratios = compute_ratios(rows)
    versions = {tool.program or tool.name: tool.version() for tool in known.values()}
    versions |= {
        "ociflow_git": git_revision(REPO_ROOT),
        "docker-registry": registry_version(),
        "python": platform.python_version(),
    }
    config = {
        **{k: v for k, v in asdict(settings).items() if k not in ("workdir", "json", "png")},
        "workdir_filesystem": fstype,
    }
    image_info = {
        name: {"bytes": i.bytes, "blobs": i.blobs, "root": i.root, "media_type": i.media_type}
        for name, i in images.items()
    }
    machine = machine_info()
    startup = measure_startup(runs=1 if settings.smoke else 7)
    doc = document(
        config=config, machine=machine, versions=versions, images=image_info,
        rows=rows, ratios=ratios, started=started,
    )  # fmt: skip
    doc["startup_seconds"] = {name: round(seconds, 4) for name, seconds in startup.items()}
    write_json(settings.json, doc)
    print(
        f"ociflow benchmark, {started:%Y-%m-%d %H:%M} UTC, {machine['cpu']}, {machine['cores']} "
        f"cores, {machine['memory_gib']} GiB; runs {settings.runs} (+{settings.warmup} warm-up), "
        f"median wall; work dir on {fstype}"
    )
    print(", ".join(f"{k} {v}" for k, v in versions.items() if v))
    print(table(rows, ratios))
    print(describe(startup))
    print(f"\nJSON: {settings.json}")
    if settings.png is not None:
        if matplotlib_available():
            write_png(settings.png, rows, f"ociflow benchmark {started:%Y-%m-%d}")
            print(f"PNG: {settings.png}")
        else:
            _log("note: --png needs matplotlib, which is not installed; no chart written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
