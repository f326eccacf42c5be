"""Run one command as a child process and measure it: wall time, CPU time and peak RSS.

The command runs under ``launcher.py`` (a tiny interpreter that forks it, waits with
``os.wait4`` and reports): wall time is ``time.perf_counter`` around that fork and reap, CPU
time (user + system) and peak RSS come from the kernel's accounting of that one child, so they
are mixed neither with the harness's usage nor with other children such as the registries.
``ru_maxrss`` is in KiB on Linux. See ``launcher.py`` for why the harness does not spawn the
tool itself: the reported peak RSS would then never be below the harness's own RSS.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

STDERR_TAIL = 2000
LAUNCHER = Path(__file__).resolve().with_name("launcher.py")


@dataclass(frozen=True)
class Measurement:
    """One run: ``returncode`` 0 means success; ``stderr_tail`` is the end of its stderr."""

    wall_s: float
    cpu_s: float
    maxrss_kib: int
    returncode: int
    stderr_tail: str
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def run_measured(
    argv: Sequence[str],
    *,
    stderr_path: Path,
    timeout: float,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Measurement:
    """Run ``argv`` to completion (killed after ``timeout`` seconds) and measure it.

    stdout is discarded; stderr goes to ``stderr_path`` (a file, so a chatty child can never
    block on a full pipe) and its tail is returned. The file is removed afterwards.
    """
    result_path = stderr_path.with_name(stderr_path.name + ".rusage")
    launcher = [sys.executable, "-I", "-S", str(LAUNCHER), str(result_path), *argv]
    start = time.perf_counter()
    with stderr_path.open("wb") as err:
        # A new session, so a timeout kills the launcher and the tool together.
        proc = subprocess.Popen(
            launcher,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
        timed_out = False
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            if proc.returncode is None:  # timed out, or the harness is being interrupted
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    outer_wall = time.perf_counter() - start
    tail = _tail(stderr_path)
    stderr_path.unlink(missing_ok=True)
    try:
        fields = result_path.read_text().split()
        wall, user, system = (float(f) for f in fields[:3])
        maxrss, code = (int(f) for f in fields[3:5])
    except (OSError, ValueError):
        # No report: the launcher was killed (timeout) or could not start.
        return Measurement(outer_wall, 0.0, 0, proc.returncode or -1, tail, timed_out)
    finally:
        result_path.unlink(missing_ok=True)
    return Measurement(
        wall_s=wall,
        cpu_s=user + system,
        maxrss_kib=maxrss,
        returncode=code,
        stderr_tail=tail,
        timed_out=timed_out,
    )


def _tail(path: Path) -> str:
    with path.open("rb") as file:
        file.seek(0, os.SEEK_END)
        file.seek(max(0, file.tell() - STDERR_TAIL))
        return file.read().decode("utf-8", "replace").strip()


@dataclass(frozen=True)
class Summary:
    """Measured runs of one (tool, scenario, image): medians of wall and CPU, max of RSS."""

    runs: int
    wall_median_s: float
    wall_all_s: tuple[float, ...]
    cpu_median_s: float
    maxrss_kib: int

    @classmethod
    def of(cls, measurements: Sequence[Measurement]) -> Summary:
        if not measurements:
            raise ValueError("no measurements")
        walls = tuple(m.wall_s for m in measurements)
        return cls(
            runs=len(measurements),
            wall_median_s=statistics.median(walls),
            wall_all_s=walls,
            cpu_median_s=statistics.median(m.cpu_s for m in measurements),
            maxrss_kib=max(m.maxrss_kib for m in measurements),
        )
