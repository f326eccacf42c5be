"""The benchmark harness keeps working: a smoke run against real registries, plus its measuring.

No timing assertions anywhere: the numbers only have to exist and be positive.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.measure import run_measured
from tests.conftest import require_binary

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ("pull", "push", "copy")
IMAGES = ("big", "typical", "small", "multi")


def run_harness(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], Any]:
    """Run ``python -m benchmarks.run`` with a private work dir and JSON file."""
    out = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--json", str(out),
         "--workdir", str(tmp_path / "work"), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done, json.loads(out.read_text())


def rows_by_key(doc: Any) -> dict[tuple[str, str, str], dict[str, Any]]:
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for row in doc["results"]:
        key = (row["tool"], row["scenario"], row["image"])
        assert key not in rows, f"duplicate row {key}"
        rows[key] = row
    return rows


@pytest.mark.integration
def test_smoke_run_measures_every_tool_scenario_and_image(tmp_path: Path, skopeo: str) -> None:
    require_binary("docker-registry")
    done, doc = run_harness(tmp_path, "--smoke")
    rows = rows_by_key(doc)

    expected = {(t, s, i) for t in ("ociflow", "skopeo") for s in SCENARIOS for i in IMAGES}
    expected.add(("curl-put", "push", "big"))
    assert set(rows) == expected
    if shutil.which("curl") is None:  # the reference is optional; its row then says why
        curl_row = rows.pop(("curl-put", "push", "big"))
        assert curl_row["status"] == "n/a" and "curl" in curl_row["reason"]
    for key, row in rows.items():
        assert row["status"] == "ok", (key, row.get("reason"))
        assert row["runs"] == 1
        for field in ("mb_per_s", "wall_s", "cpu_s", "rss_mb"):
            assert row[field] > 0, (key, field, row)
        if key[0] != "curl-put":
            assert row["bytes"] == doc["images"][key[2]]["bytes"]
    # curl-put moves the big image's layer alone: less than the whole image.
    if ("curl-put", "push", "big") in rows:
        assert 0 < rows[("curl-put", "push", "big")]["bytes"] < doc["images"]["big"]["bytes"]
    # Every ociflow row has its ratio against skopeo, computed from the same run's medians.
    ratios = {(r["scenario"], r["image"]) for r in doc["ratios"] if r["other"] == "skopeo"}
    assert ratios == {(s, i) for s in SCENARIOS for i in IMAGES}
    for (_tool, scenario, image), row in rows.items():
        skopeo_wall = rows[("skopeo", scenario, image)]["wall_s"]
        assert row["vs_skopeo"] == pytest.approx(row["wall_s"] / skopeo_wall, rel=0.01)

    assert doc["config"]["smoke"] is True
    assert doc["versions"]["skopeo"] and doc["versions"]["docker-registry"]
    assert doc["machine"]["cores"] >= 1
    startup = doc["startup_seconds"]
    assert 0 < startup["python"] <= startup["python + asyncio + aiohttp"]
    assert startup["ociflow --version"] > 0 and startup["skopeo --version"] > 0
    lines = done.stdout.splitlines()
    assert any(line.split()[:4] == ["tool", "scenario", "image", "MB/s"] for line in lines if line)
    for tool, scenario, image in expected:  # n/a rows are printed too
        assert any(line.split()[:3] == [tool, scenario, image] for line in lines if line), (
            tool, scenario, image,
        )  # fmt: skip
    # Registries stopped and tmp data gone: the work dir the harness created is removed.
    assert not (tmp_path / "work").exists()


@pytest.mark.integration
def test_a_failing_tool_is_a_failed_row_and_the_run_goes_on(tmp_path: Path, skopeo: str) -> None:
    require_binary("docker-registry")
    # --jobs 0 is a usage error for ociflow: every ociflow run fails, skopeo's must not.
    done, doc = run_harness(
        tmp_path, "--smoke", "--images", "small", "--scenarios", "pull,push",
        "--tools", "ociflow,skopeo", "--ociflow-args=--jobs 0",
    )  # fmt: skip
    rows = rows_by_key(doc)
    assert set(rows) == {(t, s, "small") for t in ("ociflow", "skopeo") for s in ("pull", "push")}
    for scenario in ("pull", "push"):
        failed = rows[("ociflow", scenario, "small")]
        assert failed["status"] == "failed"
        assert "exit code 2" in failed["reason"] and "--jobs" in failed["reason"]
        assert "wall_s" not in failed
        assert rows[("skopeo", scenario, "small")]["status"] == "ok"
    assert "failed [1]" in done.stdout and "exit code 2" in done.stdout
    assert not (tmp_path / "work").exists()


@pytest.mark.integration
def test_sigterm_stops_registries_and_removes_the_work_dir(tmp_path: Path, skopeo: str) -> None:
    require_binary("docker-registry")
    work = tmp_path / "work"
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.run", "--smoke", "--json", str(tmp_path / "r.json"),
         "--workdir", str(work)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:  # wait until registries run and a measured run has finished
            seen.append(line)
            if " run 1/1: " in line:
                break
        assert any(" run 1/1: " in line for line in seen), "".join(seen)
        assert work.is_dir()
        proc.terminate()
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert not (tmp_path / "r.json").exists()
    assert not work.exists()
    leftovers = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(work).encode() in cmdline.read_bytes():
                leftovers.append(cmdline.read_bytes())
        except OSError:
            continue  # the process exited meanwhile
    assert not leftovers


def test_peak_rss_is_the_childs_own(tmp_path: Path) -> None:
    """A child that touches 80 MB reports at least that; a tiny one is not charged the
    harness's memory (the reason for benchmarks/launcher.py)."""
    hungry = run_measured(
        [sys.executable, "-c", "data = b'x' * 80_000_000"],
        stderr_path=tmp_path / "err", timeout=60,
    )  # fmt: skip
    tiny = run_measured(["true"], stderr_path=tmp_path / "err", timeout=60)
    assert hungry.ok and tiny.ok
    assert hungry.maxrss_kib * 1024 >= 80_000_000
    assert 0 < tiny.maxrss_kib * 1024 < 20_000_000
    assert hungry.cpu_s > 0 and hungry.wall_s > 0
    assert not list(tmp_path.iterdir())  # stderr and rusage files cleaned up


def test_a_hung_child_is_killed_and_reported(tmp_path: Path) -> None:
    failing = run_measured(
        [sys.executable, "-c", "import sys; sys.stderr.write('boom\\n'); sys.exit(3)"],
        stderr_path=tmp_path / "err", timeout=60,
    )  # fmt: skip
    assert (failing.returncode, failing.stderr_tail, failing.ok) == (3, "boom", False)
    hung = run_measured(["sleep", "60"], stderr_path=tmp_path / "err", timeout=0.5)
    assert hung.timed_out and not hung.ok


@pytest.mark.integration
def test_ranged_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """The per-connection-cap benchmark of parallel ranges keeps working (numbers unchecked)."""
    from benchmarks.ranged import main as ranged_main

    require_binary("docker-registry")
    assert ranged_main(["--mib", "2", "--cap", "64MiB", "--ks", "2", "--runs", "1"]) == 0
    table = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in table[2:]}
    assert set(rows) == {"1", "2"}
    assert float(rows["2"][1]) > 0 and rows["1"][3] == "1.00x"
