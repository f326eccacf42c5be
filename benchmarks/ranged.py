"""Parallel ranged downloads under a per-connection bandwidth cap (issue 4's benchmark).

Object stores behind registries often cap each connection; fetching one large blob as K byte
ranges over K connections then multiplies the throughput. This script measures it: a real
registry on loopback, the test suite's fault proxy in front of it throttling every response to
``--cap`` bytes/s, and ``ociflow.copy`` pulling a ``--mib`` MiB layer into a fresh OCI layout with
``--range-parallel`` 1 (one stream) and each K given. It prints MB/s per K and the ratio to the
single stream (median of ``--runs``). It asserts nothing.

    python -m benchmarks.ranged [--mib 128] [--cap 16MiB] [--ks 4,8] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import ociflow
from bench_data.generate import generate
from ociflow.bench import parse_size
from ociflow.http.transport import HttpOptions
from tests.fault_proxy import Fault, FaultProxy
from tests.registry_server import start_registry


async def _pull(source: str, out: Path, options: HttpOptions) -> float:
    started = time.perf_counter()
    await ociflow.copy(source, f"oci:{out}:1", options=options, resume=False)
    elapsed = time.perf_counter() - started
    shutil.rmtree(out)
    return elapsed


async def run(
    mib: int, cap: int, ks: list[int], runs: int, workdir: Path
) -> list[dict[str, float]]:
    registry = start_registry(workdir / "registry")
    try:
        image = generate("big", workdir / "image", big_mib=mib)
        plain = HttpOptions(plain_http=True)
        await ociflow.copy(f"oci:{image['path']}:{image['tag']}",
                           f"docker://{registry.address}/ranged/big:1", options=plain)
        size = int(image["bytes"])
        rows = []
        async with FaultProxy(registry.url) as proxy:
            proxy.add("GET", r"/blobs/sha256:", Fault(throttle=cap))
            source = f"docker://{proxy.address}/ranged/big:1"
            for k in [1, *ks]:
                options = replace(plain, range_parallel=k, range_threshold=1)
                walls = [await _pull(source, workdir / "out", options) for _ in range(runs)]
                wall = statistics.median(walls)
                rows.append({"k": k, "wall": wall, "mbps": size / wall / 1e6})
        return rows
    finally:
        registry.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=128, help="layer size in MiB (default 128)")
    parser.add_argument("--cap", type=parse_size, default="16MiB",
                        help="bytes per second per connection (default 16MiB)")
    parser.add_argument("--ks", default="4,8", help="range parallelism to try (default 4,8)")
    parser.add_argument("--runs", type=int, default=3, help="runs per K (default 3)")
    parser.add_argument("--workdir", default="/dev/shm" if Path("/dev/shm").is_dir() else None)
    args = parser.parse_args(argv)
    ks = [int(k) for k in args.ks.split(",") if k]
    with tempfile.TemporaryDirectory(prefix="ociflow-ranged-", dir=args.workdir) as tmp:
        rows = asyncio.run(run(args.mib, args.cap, ks, args.runs, Path(tmp)))
    single = rows[0]["mbps"]
    print(f"ranged download of a {args.mib} MiB layer, each connection capped at "
          f"{args.cap / 2**20:.1f} MiB/s, median of {args.runs}")
    print(f"{'K':>3} {'MB/s':>8} {'wall s':>8} {'vs K=1':>7}")
    for row in rows:
        print(f"{row['k']:>3} {row['mbps']:8.1f} {row['wall']:8.2f} {row['mbps'] / single:6.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
