"""``ociflow bench``: measure a registry from the user's seat.

Pushes random blobs to a repository, pulls them back and verifies them, measures HEAD and
small-blob request rates, then deletes every blob it created. Blobs are staged in temporary
files (written and hashed once), so memory stays bounded whatever ``--size`` is. Whatever
cannot be deleted (registries often disable deletion) is reported by digest, never silently
left behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import statistics
import tempfile
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ociflow import mediatypes
from ociflow.descriptor import Descriptor
from ociflow.digest import Digest
from ociflow.errors import OciflowError
from ociflow.http.errors import error_from_response
from ociflow.http.transport import HttpOptions, Session
from ociflow.reference import RegistryReference
from ociflow.streams import drain, verified
from ociflow.target import CHUNK_SIZE
from ociflow.targets.registry import RegistryTarget

SMALL_BLOB_SIZE = 1024
SMALL_REQUESTS = 200


@dataclass
class BenchResult:
    """Throughput and latency figures of one ``ociflow bench`` run."""

    repository: str
    blobs: int
    blob_size: int
    jobs: int
    upload_seconds: float = 0.0
    download_seconds: float = 0.0
    first_byte_seconds: list[float] = field(default_factory=list)
    head_per_second: float = 0.0
    small_get_per_second: float = 0.0
    deleted: list[str] = field(default_factory=list)
    left_behind: dict[str, str] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return self.blobs * self.blob_size

    @property
    def upload_mbps(self) -> float:
        return self.total_bytes / self.upload_seconds / 1e6 if self.upload_seconds else 0.0

    @property
    def download_mbps(self) -> float:
        return self.total_bytes / self.download_seconds / 1e6 if self.download_seconds else 0.0

    def to_json(self) -> dict[str, Any]:
        ttfb = self.first_byte_seconds
        return {
            "repository": self.repository,
            "blobs": self.blobs,
            "blobSize": self.blob_size,
            "jobs": self.jobs,
            "uploadMBps": round(self.upload_mbps, 1),
            "downloadMBps": round(self.download_mbps, 1),
            "uploadSeconds": round(self.upload_seconds, 3),
            "downloadSeconds": round(self.download_seconds, 3),
            "firstByteMs": round(statistics.median(ttfb) * 1000, 2) if ttfb else None,
            "headPerSecond": round(self.head_per_second, 1),
            "smallGetPerSecond": round(self.small_get_per_second, 1),
            "deleted": len(self.deleted),
            "leftBehind": self.left_behind,
        }

    def report(self) -> str:
        ttfb = statistics.median(self.first_byte_seconds) * 1000 if self.first_byte_seconds else 0
        lines = [
            f"registry bench: {self.repository}, {self.blobs} blob(s) of "
            f"{self.blob_size / 2**20:.1f} MiB, {self.jobs} job(s)",
            f"  upload    {self.upload_mbps:8.1f} MB/s  ({self.upload_seconds:.2f} s)",
            f"  download  {self.download_mbps:8.1f} MB/s  ({self.download_seconds:.2f} s), "
            f"first byte {ttfb:.1f} ms (median)",
            f"  HEAD      {self.head_per_second:8.1f} requests/s",
            f"  small GET {self.small_get_per_second:8.1f} requests/s "
            f"({SMALL_BLOB_SIZE}-byte blob)",
            f"  cleaned up {len(self.deleted)} blob(s)",
        ]
        for digest, why in self.left_behind.items():
            lines.append(f"  NOT deleted: {digest} ({why})")
        return "\n".join(lines)


async def bench(
    ref: RegistryReference,
    *,
    size: int = 256 * 2**20,
    blobs: int = 1,
    jobs: int = 4,
    options: HttpOptions | None = None,
    workdir: str | None = None,
) -> BenchResult:
    """Run the benchmark against ``ref``'s repository; ``size`` is the size of each blob."""
    if size < 1 or blobs < 1 or jobs < 1:
        raise ValueError("size, blobs and jobs must be positive")
    result = BenchResult(str(ref.with_(tag=None)), blobs, size, jobs)
    with tempfile.TemporaryDirectory(prefix="ociflow-bench-", dir=workdir) as tmp:
        staged = [await asyncio.to_thread(_stage, Path(tmp) / f"blob{i}", size)
                  for i in range(blobs)]
        small_data = os.urandom(SMALL_BLOB_SIZE)
        small = Descriptor(mediatypes.OCI_LAYER_TAR, Digest.of(small_data), SMALL_BLOB_SIZE)
        async with Session(options, jobs=jobs) as session:
            target = RegistryTarget(ref, session.registry(ref, options))
            created: list[Descriptor] = []
            try:
                await _upload(target, staged, jobs, result, created)
                await target.push_blob(small, lambda: _bytes_stream(small_data))
                created.append(small)
                await _download(target, staged, jobs, result)
                result.head_per_second = await _rate(
                    jobs, lambda: _exists(target, small)
                )
                result.small_get_per_second = await _rate(
                    jobs, lambda: drain(verified(target.fetch_blob(small), small))
                )
            finally:
                await _delete(target, ref.repository, created, result)
    return result


def _stage(path: Path, size: int) -> Descriptor:
    """Write ``size`` random bytes to ``path`` and return their descriptor."""
    rng = random.Random(os.urandom(16))
    hasher = hashlib.sha256()
    with path.open("wb") as file:
        left = size
        while left:
            piece = rng.randbytes(min(CHUNK_SIZE, left))
            hasher.update(piece)
            file.write(piece)
            left -= len(piece)
    digest = Digest(f"sha256:{hasher.hexdigest()}")
    return Descriptor(mediatypes.OCI_LAYER_TAR, digest, size, {"path": str(path)})


async def _file_stream(path: str) -> AsyncGenerator[bytes, None]:
    loop = asyncio.get_running_loop()
    with open(path, "rb") as file:  # opening is cheap; the reads go to a worker thread
        while chunk := await loop.run_in_executor(None, file.read, CHUNK_SIZE):
            yield chunk


async def _bytes_stream(data: bytes) -> AsyncGenerator[bytes, None]:
    yield data


async def _upload(
    target: RegistryTarget,
    staged: list[Descriptor],
    jobs: int,
    result: BenchResult,
    created: list[Descriptor],
) -> None:
    limit = asyncio.Semaphore(jobs)

    async def one(desc: Descriptor) -> None:
        async with limit:
            path = (desc.annotations or {})["path"]
            await target.push_blob(desc, lambda: verified(_file_stream(path), desc))
            created.append(desc)

    started = time.perf_counter()
    await asyncio.gather(*(one(d) for d in staged))
    result.upload_seconds = time.perf_counter() - started


async def _download(
    target: RegistryTarget, staged: list[Descriptor], jobs: int, result: BenchResult
) -> None:
    limit = asyncio.Semaphore(jobs)

    async def one(desc: Descriptor) -> None:
        async with limit:
            begun = time.perf_counter()
            first = True
            stream = verified(target.fetch_blob(desc), desc)
            try:
                async for _ in stream:
                    if first:
                        result.first_byte_seconds.append(time.perf_counter() - begun)
                        first = False
            finally:
                await stream.aclose()

    started = time.perf_counter()
    await asyncio.gather(*(one(d) for d in staged))
    result.download_seconds = time.perf_counter() - started


async def _exists(target: RegistryTarget, desc: Descriptor) -> None:
    if not await target.exists(desc):
        raise OciflowError(f"{target.reference}: blob {desc.digest} vanished during the bench")


async def _rate(jobs: int, request: Callable[[], Awaitable[None]]) -> float:
    """Requests per second for ``SMALL_REQUESTS`` calls of ``request``, ``jobs`` at a time."""
    limit = asyncio.Semaphore(jobs)

    async def one() -> None:
        async with limit:
            await request()

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(SMALL_REQUESTS)))
    return SMALL_REQUESTS / (time.perf_counter() - started)


async def _delete(
    target: RegistryTarget, repository: str, created: list[Descriptor], result: BenchResult
) -> None:
    for desc in created:
        context = f"{target.reference}: deleting blob {desc.digest}"
        try:
            response = await target.client.send(
                "DELETE", f"/v2/{repository}/blobs/{desc.digest}", context=context
            )
            async with response:
                if response.status not in (200, 202, 204):
                    raise await error_from_response(response, context)
        except OciflowError as exc:
            result.left_behind[str(desc.digest)] = str(exc)
        else:
            result.deleted.append(str(desc.digest))


def parse_size(text: str) -> int:
    """``256MiB``, ``1GiB``, ``100MB``, ``4096`` → bytes."""
    units = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6,
             "mib": 2**20, "g": 10**9, "gb": 10**9, "gib": 2**30}
    stripped = text.strip().lower()
    number = stripped.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = stripped[len(number):]
    if unit not in units or not number:
        raise ValueError(f"invalid size {text!r} (e.g. 256MiB, 1GiB, 100MB)")
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"invalid size {text!r}") from None
    return int(value * units[unit])
