"""Start-up floors: what a process costs before it moves a byte.

Every benchmark run is a fresh process, so small images measure start-up as much as transfer.
These figures say how much: the interpreter alone, the imports each Python tool cannot avoid
(asyncio and aiohttp for ociflow, requests for oras-py and python-dxf), ociflow's own imports
for a copy, and ``skopeo --version`` for the Go binary. Medians of fresh processes.
"""

from __future__ import annotations

import importlib.util
import shutil
import statistics
import subprocess
import sys
import time

# (name, the module that must be installed or None, the code run)
_PYTHON_STEPS = (
    ("python", None, "pass"),
    ("python + requests", "requests", "import requests"),
    ("python + asyncio + aiohttp", "aiohttp", "import asyncio, aiohttp"),
    ("python + ociflow copy imports", "ociflow",
     "import ociflow.engine, ociflow.targets.registry, ociflow.targets.layout"),
)


def _median_wall(command: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure_startup(runs: int = 7) -> dict[str, float]:
    """Median wall seconds of each start-up step that is available on this machine."""
    results: dict[str, float] = {}
    for name, module, code in _PYTHON_STEPS:
        if module is not None and importlib.util.find_spec(module) is None:
            continue
        results[name] = _median_wall([sys.executable, "-c", code], runs)
    for name, program in (("ociflow --version", "ociflow"), ("skopeo --version", "skopeo")):
        path = shutil.which(program)
        if path is not None:
            results[name] = _median_wall([path, "--version"], runs)
    return results


def describe(results: dict[str, float]) -> str:
    return "start-up (median wall): " + ", ".join(
        f"{name} {seconds:.3f} s" for name, seconds in results.items()
    )
