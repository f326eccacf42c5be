"""The public Python API: exports, target objects, progress events, lazy imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import ociflow
from ociflow.descriptor import Descriptor
from ociflow.progress import Outcome, Progress
from ociflow.reference import parse_reference
from ociflow.targets.layout import LayoutTarget


def test_all_is_sorted_and_resolvable() -> None:
    names = [n for n in ociflow.__all__ if n != "__version__"]
    assert names == sorted(names)
    for name in names:
        assert getattr(ociflow, name) is not None
    assert issubclass(ociflow.DigestMismatchError, ociflow.OciflowError)
    with pytest.raises(AttributeError):
        _ = ociflow.no_such_name  # type: ignore[attr-defined]


def test_import_and_version_are_lazy() -> None:
    code = (
        "import sys, ociflow; heavy = ('aiohttp', 'azure.identity', 'zstandard'); "
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"
    version = subprocess.run(
        [sys.executable, "-m", "ociflow", "--version"], check=True, capture_output=True, text=True
    )
    assert version.stdout.strip() == f"ociflow {ociflow.__version__}"


class Recorder(Progress):
    def __init__(self) -> None:
        self.total: int | None = None
        self.bytes: dict[str, int] = {}
        self.done: dict[str, Outcome] = {}
        self.finished = False

    def start(self, total_bytes: int | None) -> None:
        self.total = total_bytes

    def blob_bytes(self, desc: Descriptor, count: int) -> None:
        self.bytes[desc.digest] = self.bytes.get(desc.digest, 0) + count

    def blob_done(self, desc: Descriptor, outcome: Outcome) -> None:
        self.done[desc.digest] = outcome

    def finish(self) -> None:
        self.finished = True


async def test_target_objects_and_progress_events(sample_layout: Path, tmp_path: Path) -> None:
    source = LayoutTarget(parse_reference(f"oci:{sample_layout}:1.0"))  # type: ignore[arg-type]
    recorder = Recorder()
    result = await ociflow.copy(
        source, parse_reference(f"oci:{tmp_path / 'out'}:v1"), progress=recorder, jobs=2
    )
    assert recorder.finished
    assert set(recorder.done.values()) == {"copied"}
    assert len(recorder.done) == result.blobs_copied
    assert recorder.total == sum(recorder.bytes.values())
    blobs = tmp_path / "out" / "blobs" / "sha256"
    for digest, count in recorder.bytes.items():
        assert (blobs / digest.split(":")[1]).stat().st_size == count
    # the caller's own target is not closed by copy(): it can be used again
    again = await ociflow.copy(source, f"oci:{tmp_path / 'out'}:v2", progress=(r2 := Recorder()))
    # the destination holds the whole graph: only the new tag is written
    assert again.blobs_copied == 0 and again.manifests_skipped == 1
    assert r2.done == {} and r2.bytes == {}


def test_platform_errors_are_value_errors(sample_layout: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="platform"):
        ociflow.copy_sync(f"oci:{sample_layout}:1.0", f"oci:{tmp_path}/x:1", platform="linux")
    with pytest.raises(ociflow.NotFoundError, match="windows/amd64"):
        ociflow.copy_sync(
            f"oci:{sample_layout}:1.0", f"oci:{tmp_path}/x:1", platform="windows/amd64"
        )


async def test_tqdm_progress_draws_total_and_blob_bars(
    sample_layout: Path, tmp_path: Path
) -> None:
    import io

    from ociflow.progress import TqdmProgress

    screen = io.StringIO()
    result = await ociflow.copy(
        f"oci:{sample_layout}:1.0", f"oci:{tmp_path / 'out'}:1", progress=TqdmProgress(screen)
    )
    drawn = screen.getvalue()
    assert result.blobs_copied > 0
    # the total bar was drawn and reached every blob byte that was moved
    assert "total" in drawn and "100%" in drawn
