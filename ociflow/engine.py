"""The copy engine: walk the descriptor graph under a reference from a Source to a Destination.

(The module is not named ``copy`` so that it never shadows the ``ociflow.copy`` function.)

Two phases. *Plan*: walk the manifests from the root, fetching each once and skipping any
subtree whose manifest the destination already holds; this yields the set of blobs (deduplicated
by digest) and the manifests in push order, children before parents. *Transfer*: move blobs
concurrently (at most ``jobs`` at a time; each one checked with ``exists``, then mounted when the
destination can, else streamed through a verifier), then push the manifests in order, and the
root last with its tag. Nothing refers to a blob before the blob is verified at the destination.

*Resume.* Blobs are handed to destinations through a :class:`~ociflow.target.ResumableOpener`,
so a destination holding part of a blob from an interrupted run (a layout's partial file) asks
the source only for the rest, still verified as a whole. With ``resume`` (the default), the
destinations :func:`copy` opens itself keep what an interruption leaves, and a registry
destination records its open upload sessions in the on-disk journal
(:mod:`ociflow.journal`), so that running the same copy again continues it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ociflow import mediatypes
from ociflow.descriptor import Descriptor, Platform
from ociflow.digest import Digest, Verifier
from ociflow.errors import (
    CancelledTransferError,
    DigestMismatchError,
    InvalidReferenceError,
    OciflowError,
)
from ociflow.http.credentials import AzureAD, Credentials
from ociflow.http.transport import HttpOptions, Session
from ociflow.manifest import MAX_INDEX_DEPTH, Manifest, parse_manifest, select_platform
from ociflow.progress import Outcome, Progress
from ociflow.reference import Reference
from ociflow.streams import verified
from ociflow.target import BlobStream, Destination, Source, open_destination, open_source

DEFAULT_JOBS = 4
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CopyResult:
    """What a copy did. ``digest``/``media_type``/``size`` describe the root at the destination."""

    source: str
    destination: str
    digest: Digest
    media_type: str
    size: int
    tag: str | None
    bytes_transferred: int
    blobs_copied: int
    blobs_skipped: int
    blobs_mounted: int
    manifests_pushed: int
    manifests_skipped: int

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "destination": self.destination,
            "digest": str(self.digest),
            "mediaType": self.media_type,
            "size": self.size,
            "tag": self.tag,
            "bytesTransferred": self.bytes_transferred,
            "blobsCopied": self.blobs_copied,
            "blobsSkipped": self.blobs_skipped,
            "blobsMounted": self.blobs_mounted,
            "manifestsPushed": self.manifests_pushed,
            "manifestsSkipped": self.manifests_skipped,
        }


@dataclass
class _Plan:
    blobs: dict[Digest, Descriptor] = field(default_factory=dict)
    manifests: list[tuple[Descriptor, bytes]] = field(default_factory=list)
    seen: set[Digest] = field(default_factory=set)
    skipped_manifests: int = 0


@dataclass
class _Counts:
    bytes: int = 0
    copied: int = 0
    skipped: int = 0
    mounted: int = 0


async def copy(
    src: str | Reference | Source,
    dst: str | Reference | Destination,
    *,
    jobs: int = DEFAULT_JOBS,
    platform: str | Platform | None = None,
    progress: Progress | None = None,
    options: HttpOptions | None = None,
    resume: bool = True,
    src_credentials: Credentials | AzureAD | None = None,
    dst_credentials: Credentials | AzureAD | None = None,
    src_options: HttpOptions | None = None,
    dst_options: HttpOptions | None = None,
) -> CopyResult:
    """Copy the image or index that ``src`` names to ``dst``, verifying every byte.

    ``src``/``dst`` are reference strings (``docker://…``, bare Docker references, ``oci:…``),
    parsed references, or target objects. ``platform`` (``os/arch[/variant]``) copies only that
    manifest of a multi-platform index. With ``resume``, an interrupted copy (cancelled, killed,
    failed on the network) leaves partial downloads and open upload sessions for the next run
    of the same copy to continue (see :mod:`ociflow.journal`); target objects passed in keep
    their own settings. ``src_credentials``/``dst_credentials`` are used when a registry asks
    for credentials (``Credentials``, or ``AzureAD()`` to sign in to Azure Container Registry
    with azure-identity); without them, they come from the Docker config (``options.auth_file`` or
    the default places), else the registry is used anonymously. ``src_options`` and
    ``dst_options`` replace ``options`` for one side (plain HTTP or no TLS verification for
    one registry only, say).

    Raises :class:`~ociflow.errors.OciflowError` subclasses;
    :class:`~ociflow.errors.CancelledTransferError` when cancelled.
    """
    if jobs < 1:
        raise ValueError("jobs must be at least 1")
    if options is not None and options.credentials is not None:
        # One HttpOptions serves both sides: its credentials would go to both registries.
        raise ValueError("copy() takes src_credentials and dst_credentials, "
                         "not options.credentials")
    wanted = Platform.parse(platform) if isinstance(platform, str) else platform
    progress = progress or Progress()
    src_options = _with_credentials(src_options or options, src_credentials)
    dst_options = _with_credentials(dst_options or options, dst_credentials)
    async with Session(options, jobs=jobs) as session:
        source = src if isinstance(src, Source) else open_source(src, session, src_options)
        if isinstance(dst, Destination):
            destination = dst
        else:
            sessions = None
            if resume:
                from ociflow.journal import UploadJournal, source_id

                sessions = UploadJournal().for_source(source_id(source.reference))
            destination = open_destination(
                dst, session, dst_options, resume=resume, sessions=sessions
            )
        try:
            return await _Copier(source, destination, jobs, progress).run(wanted)
        except asyncio.CancelledError:
            again = "; run the same command again to continue" if resume else ""
            raise CancelledTransferError(
                f"copy {source.reference} -> {destination.reference} interrupted{again}"
            ) from None
        finally:
            progress.finish()
            if source is not src:
                await source.close()
            if destination is not dst:
                await destination.close()


def copy_sync(
    src: str | Reference | Source,
    dst: str | Reference | Destination,
    *,
    jobs: int = DEFAULT_JOBS,
    platform: str | Platform | None = None,
    progress: Progress | None = None,
    options: HttpOptions | None = None,
    resume: bool = True,
    src_credentials: Credentials | AzureAD | None = None,
    dst_credentials: Credentials | AzureAD | None = None,
    src_options: HttpOptions | None = None,
    dst_options: HttpOptions | None = None,
) -> CopyResult:
    """:func:`copy` for synchronous callers (runs its own event loop)."""
    return asyncio.run(
        copy(
            src,
            dst,
            jobs=jobs,
            platform=platform,
            progress=progress,
            options=options,
            resume=resume,
            src_credentials=src_credentials,
            dst_credentials=dst_credentials,
            src_options=src_options,
            dst_options=dst_options,
        )
    )


def _with_credentials(
    options: HttpOptions | None, credentials: Credentials | AzureAD | None
) -> HttpOptions | None:
    if credentials is None:
        return options
    return dataclasses.replace(options or HttpOptions(), credentials=credentials)


class _Copier:
    def __init__(self, source: Source, dest: Destination, jobs: int, progress: Progress) -> None:
        self.source = source
        self.dest = dest
        self.progress = progress
        # Targets that take one writer at a time (a tar stream) get one job.
        self.jobs = jobs if dest.capabilities.concurrent_writes else 1
        self.limit = asyncio.Semaphore(self.jobs)
        self.counts = _Counts()

    async def run(self, wanted: Platform | None) -> CopyResult:
        root = await self.source.resolve()
        root_data = await self.source.fetch_manifest(root)
        if wanted is not None and mediatypes.is_index(root.media_type):
            index = parse_manifest(root_data, root.media_type)
            root = select_platform(index, wanted, str(self.source.reference))
            root_data = await self.source.fetch_manifest(root)
        expected = self.dest.reference.digest
        if expected is not None and expected != root.digest:
            raise InvalidReferenceError(
                f"{self.dest.reference}: the source resolves to {root.digest}, "
                "not the digest the destination names"
            )
        plan = _Plan()
        root_manifest = parse_manifest(root_data, root.media_type)
        if self.dest.capabilities.single_image and root_manifest.config is None:
            raise InvalidReferenceError(
                f"{self.dest.reference}: holds one image, and {self.source.reference} is an "
                f"index of {len(root_manifest.manifests)}; choose one with --platform"
            )
        plan.seen.add(root.digest)
        if await self.dest.exists(root):
            plan.skipped_manifests += 1  # the whole graph is there: only the tag remains
        else:
            await self._plan_children(root_manifest, plan, depth=0)
        self.progress.start(sum(d.size for d in plan.blobs.values()))
        await self._transfer_blobs(plan.blobs.values())
        for desc, data in plan.manifests:
            await self.dest.push_manifest(desc, data)
            self.counts.bytes += len(data)
        tag = self.dest.reference.tag
        await self.dest.push_root(root, root_data, tag)
        self.counts.bytes += len(root_data)
        return CopyResult(
            source=str(self.source.reference),
            destination=str(self.dest.reference),
            digest=root.digest,
            media_type=root.media_type,
            size=root.size,
            tag=tag,
            bytes_transferred=self.counts.bytes,
            blobs_copied=self.counts.copied,
            blobs_skipped=self.counts.skipped,
            blobs_mounted=self.counts.mounted,
            manifests_pushed=len(plan.manifests) + 1,
            manifests_skipped=plan.skipped_manifests,
        )

    async def _plan_children(self, manifest: Manifest, plan: _Plan, depth: int) -> None:
        """Add ``manifest``'s children to ``plan``: blobs to move, manifests to push first."""
        if depth > MAX_INDEX_DEPTH:
            raise OciflowError(
                f"{self.source.reference}: index nesting deeper than {MAX_INDEX_DEPTH}"
            )
        children: list[Descriptor] = []
        for child in manifest.successors():
            if child.digest in plan.seen:
                continue
            plan.seen.add(child.digest)
            if mediatypes.is_manifest(child.media_type):
                children.append(child)
            else:
                plan.blobs[child.digest] = child
        fetched = await asyncio.gather(*(self._fetch_unless_present(c) for c in children))
        for child, data in zip(children, fetched, strict=True):
            if data is None:
                plan.skipped_manifests += 1
                continue
            await self._plan_children(parse_manifest(data, child.media_type), plan, depth + 1)
            plan.manifests.append((child, data))

    async def _fetch_unless_present(self, desc: Descriptor) -> bytes | None:
        """The manifest's bytes, or None when the destination already has its whole subtree."""
        async with self.limit:
            if await self.dest.exists(desc):
                return None
            return await self.source.fetch_manifest(desc)

    async def _transfer_blobs(self, blobs: Iterable[Descriptor]) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                for desc in blobs:
                    group.create_task(self._transfer_blob(desc))
        except BaseExceptionGroup as group_error:
            raise _first_error(group_error) from None

    async def _transfer_blob(self, desc: Descriptor) -> None:
        async with self.limit:
            outcome: Outcome
            if await self.dest.exists(desc):
                outcome = "skipped"
                self.counts.skipped += 1
            elif self.dest.capabilities.mount and await self.dest.mount(desc, self.source):
                outcome = "mounted"
                self.counts.mounted += 1
            else:
                self.progress.blob_started(desc)
                await self._push_verified(desc)
                outcome = "copied"
                self.counts.copied += 1
            self.progress.blob_done(desc, outcome)

    async def _push_verified(self, desc: Descriptor) -> None:
        """Push a blob; content that fails verification is fetched once more, never again.

        One re-fetch covers a corruption in transit (moby does the same); a second mismatch
        means the source itself is wrong, and retrying would loop (reliability.md P5).
        """
        try:
            await self.dest.push_blob(desc, _BlobOpener(self, desc))
        except DigestMismatchError as first:
            # A destination that resumed a partial blob has discarded it by now, so this
            # fetch starts from byte 0.
            log.warning("%s; fetching it once more", first)
            await self.dest.push_blob(desc, _BlobOpener(self, desc))


class _BlobOpener:
    """The engine's :class:`~ociflow.target.ResumableOpener` for one blob: the source's stream,
    verified, counted (bytes transferred, progress)."""

    def __init__(self, copier: _Copier, desc: Descriptor) -> None:
        self._copier = copier
        self._desc = desc

    def __call__(self) -> BlobStream:
        return verified(self._copier.source.fetch_blob(self._desc), self._desc, self._count)

    def resume(self, verifier: Verifier) -> BlobStream:
        desc, held = self._desc, verifier.received
        # The bytes the destination holds count as progress, not as bytes transferred.
        self._copier.progress.blob_bytes(desc, held)
        stream = self._copier.source.fetch_blob(desc, offset=held)
        return verified(stream, desc, self._count, verifier=verifier)

    def _count(self, n: int) -> None:
        self._copier.counts.bytes += n
        self._copier.progress.blob_bytes(self._desc, n)


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to report from a failed task group: an ociflow error first, if any."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for exc in leaves:
        if isinstance(exc, OciflowError):
            return exc
    return leaves[0]
