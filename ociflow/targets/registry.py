"""A repository in an OCI distribution registry, as a Source and a Destination.

Wire behaviour follows distribution-spec v1.1.1 (protocol.md §1): manifests are fetched with the
full ``Accept`` list and kept as exact bytes, capped at :data:`MAX_MANIFEST_SIZE`; blobs are read
as exactly ``size`` bytes (no trailing data, P7; ``Content-Length`` is checked, never allocated
from, P8), resumed after a broken body and fetched as parallel ranges when large
(:mod:`~ociflow.targets.blob_download`); blobs are pushed in one PUT or in chunks, resumed from
the registry's offset, and an upload whose stream fails is cancelled, never committed
(:mod:`~ociflow.targets.blob_upload`). Requests go through the client's HTTP stack
(:mod:`ociflow.http`), which owns schemes, redirects and error mapping.
"""

from __future__ import annotations

import logging

from ociflow import mediatypes
from ociflow.descriptor import Descriptor
from ociflow.digest import Digest, verify_bytes
from ociflow.errors import (
    DigestMismatchError,
    InvalidManifestError,
    InvalidReferenceError,
    NotFoundError,
    RegistryError,
)
from ociflow.http.client import RegistryClient
from ociflow.http.errors import error_from_response
from ociflow.http.message import Response
from ociflow.manifest import MAX_MANIFEST_SIZE, check_manifest_size, parse_manifest
from ociflow.reference import DEFAULT_TAG, TAG_PATTERN, Reference, RegistryReference
from ociflow.target import BlobStream, Capabilities, Opener, Source
from ociflow.targets.blob_download import download_blob
from ociflow.targets.blob_upload import (
    SessionStore,
    cancel_session,
    resolve_location,
    upload_blob,
)
from ociflow.targets.content_digest import check_served, check_stored

log = logging.getLogger(__name__)

# Content types that say nothing about the manifest kind; the document's own mediaType (or its
# shape) decides then (protocol.md §1.4: registries behind proxies, static file servers).
_GENERIC_TYPES = frozenset(
    {"", "application/json", "text/plain", "application/octet-stream", "binary/octet-stream"}
)


class RegistryTarget:
    """One repository of a registry; ``client`` is shared by every target of that registry.

    ``sessions``, when given, records open upload sessions so that a later run can continue
    them (:class:`~ociflow.targets.blob_upload.SessionStore`).
    """

    capabilities = Capabilities(concurrent_writes=True, mount=True)
    # Typed as the protocols' (mutable, hence invariant) ``reference: Reference``; the precise
    # RegistryReference is ``_ref``. Always a RegistryReference at run time.
    reference: Reference

    def __init__(
        self,
        reference: RegistryReference,
        client: RegistryClient,
        *,
        sessions: SessionStore | None = None,
    ) -> None:
        self.reference = reference
        self._ref = reference
        self.client = client
        self.sessions = sessions
        self._root: tuple[Descriptor, bytes] | None = None

    def __repr__(self) -> str:
        return f"RegistryTarget({str(self.reference)!r})"

    def _context(self, operation: str) -> str:
        return f"{self.reference}: {operation}"

    def _path(self, kind: str, name: str) -> str:
        # Repository, digest and tag are grammar-checked before they get here (I1), so they
        # can be placed in a URL path as they are.
        return f"/v2/{self._ref.repository}/{kind}/{name}"

    # -- Source ---------------------------------------------------------------------------

    async def resolve(self) -> Descriptor:
        """The descriptor of the manifest the reference names (by digest if it has one)."""
        ref = self._ref
        name = ref.digest or ref.tag or DEFAULT_TAG
        context = self._context("fetching manifest")
        response = await self.client.send(
            "GET",
            self._path("manifests", name),
            context=context,
            headers={"Accept": mediatypes.MANIFEST_ACCEPT},
        )
        async with response:
            await self._expect(response, 200, context, f"{ref}: manifest not found")
            data = await self._read_manifest(response, MAX_MANIFEST_SIZE, context)
            content_type = mediatypes.base(response.headers.get("Content-Type", ""))
            header_digest = response.headers.get("Docker-Content-Digest")
            if ref.digest is not None:
                check_served(response.headers.get("Docker-Content-Digest"), ref.digest, context)
        declared = None if content_type in _GENERIC_TYPES else content_type
        try:
            manifest = parse_manifest(data, declared)
        except InvalidManifestError as exc:
            raise InvalidManifestError(f"{context}: {exc}") from None
        algorithm = ref.digest.algorithm if ref.digest else "sha256"
        digest = Digest.of(data, algorithm)
        if ref.digest is not None and digest != ref.digest:
            raise DigestMismatchError(
                f"{context}: the registry sent content that hashes to {digest}"
            )
        if header_digest and header_digest != digest and ref.digest is None:
            # Advisory only for a tag: the digest is always computed from the bytes
            # (protocol.md §1.4, P19); a registry converting formats can send a stale header.
            # By digest, the header was checked above.
            log.warning("%s: Docker-Content-Digest %.80s differs from the content's %s",
                        ref, header_digest, digest)
        desc = Descriptor(manifest.media_type, digest, len(data))
        self._root = (desc, data)
        return desc

    async def fetch_manifest(self, desc: Descriptor) -> bytes:
        """The exact bytes of manifest ``desc``, verified (size and digest)."""
        root = self._root
        if root is not None and root[0].digest == desc.digest and root[0].size == desc.size:
            return root[1]  # fetched by resolve(); no second GET
        context = self._context(f"fetching manifest {desc.digest}")
        check_manifest_size(desc, self._context("fetching manifest"))
        response = await self.client.send(
            "GET",
            self._path("manifests", desc.digest),
            context=context,
            headers={"Accept": mediatypes.MANIFEST_ACCEPT},
        )
        async with response:
            await self._expect(response, 200, context, f"{context}: manifest not found")
            self._expect_length(response, desc.size, context)
            check_served(response.headers.get("Docker-Content-Digest"), desc.digest, context)
            data = await response.read(desc.size)  # one byte more than expected is enough
        try:
            verify_bytes(data, desc.digest, desc.size, what="manifest")
        except DigestMismatchError as exc:
            raise DigestMismatchError(f"{self.reference}: {exc}") from None
        return data

    def fetch_blob(self, desc: Descriptor, *, offset: int = 0) -> BlobStream:
        """Exactly ``desc.size - offset`` raw bytes of the blob from ``offset`` on, in chunks of
        up to :data:`~ociflow.target.CHUNK_SIZE`; resumed after a broken body, and fetched as
        parallel ranges when large (:mod:`~ociflow.targets.blob_download`).

        Not verified (the engine does that); but a body that is announced or turns out shorter
        or longer than ``desc.size`` raises :class:`DigestMismatchError` before its last chunk,
        as does a ``Docker-Content-Digest`` naming another blob (P19).
        """
        return download_blob(
            self.client,
            self._path("blobs", desc.digest),
            desc,
            context=self._context(f"fetching blob {desc.digest}"),
            options=self.client.options,
            offset=offset,
            loopback=self._ref.is_loopback,
        )

    # -- Destination ----------------------------------------------------------------------

    async def exists(self, desc: Descriptor) -> bool:
        """HEAD the blob (or manifest): 200 → True (a blob's length must match), 404 → False."""
        is_manifest = mediatypes.is_manifest(desc.media_type)
        kind = "manifest" if is_manifest else "blob"
        context = self._context(f"checking {kind} {desc.digest}")
        headers = {"Accept": mediatypes.MANIFEST_ACCEPT} if is_manifest else {}
        response = await self.client.send(
            "HEAD",
            self._path("manifests" if is_manifest else "blobs", desc.digest),
            context=context,
            headers=headers,
        )
        async with response:
            if response.status == 404:
                return False
            if response.status != 200:
                raise await error_from_response(response, context)
            length = response.content_length
            return is_manifest or length is None or length == desc.size

    async def mount(self, desc: Descriptor, source: Source) -> bool:
        """Mount a blob from another repository of the same registry (protocol.md §1.6.5).

        Only tried when ``source`` is a :class:`RegistryTarget` on the same client. Anything
        but 201 means "not mounted" and the caller uploads instead (§5.2); a session the
        registry opened instead (202) is cancelled.
        """
        if (
            not isinstance(source, RegistryTarget)
            or source.client is not self.client
            or source._ref.repository == self._ref.repository
        ):
            return False
        context = self._context(f"mounting blob {desc.digest}")
        response = await self.client.send(
            "POST",
            "/v2/" + self._ref.repository + "/blobs/uploads/",
            context=context,
            query={"mount": desc.digest, "from": source._ref.repository},
            headers={"Content-Length": "0"},
        )
        async with response:
            status, location = response.status, response.headers.get("Location")
            request_url = response.url
        if status == 201:
            return True
        if status == 202 and location:
            try:
                upload = resolve_location(request_url, location, context)
            except RegistryError:
                return False
            await cancel_session(self.client, upload, context)
        return False

    async def push_blob(self, desc: Descriptor, open_stream: Opener) -> None:
        """Upload a blob from a verified stream: one PUT, or chunks when large, resumed from the
        registry's offset after a failure (:mod:`~ociflow.targets.blob_upload`).

        Bodies are streamed (never buffered whole) with an explicit ``Content-Length``. If the
        stream raises, the registry cannot commit, the session is cancelled, and the stream's
        own error is raised.
        """
        await upload_blob(
            self.client,
            self._ref.repository,
            desc,
            open_stream,
            context=self._context(f"pushing blob {desc.digest}"),
            options=self.client.options,
            exists=lambda: self.exists(desc),
            store=self.sessions,
        )

    async def push_manifest(self, desc: Descriptor, data: bytes) -> None:
        """PUT a manifest by digest, as its exact bytes."""
        await self._put_manifest(desc, data, None)

    async def push_root(self, desc: Descriptor, data: bytes, tag: str | None) -> None:
        """PUT the root manifest by ``tag`` (by digest when there is none)."""
        await self._put_manifest(desc, data, tag)

    async def close(self) -> None:
        """Nothing to release: the :class:`~ociflow.http.transport.Session` owns connections."""

    # -- helpers --------------------------------------------------------------------------

    async def _put_manifest(self, desc: Descriptor, data: bytes, tag: str | None) -> None:
        operation = f"pushing manifest {desc.digest}" + (f" as {tag}" if tag else "")
        context = self._context(operation)
        if len(data) > MAX_MANIFEST_SIZE:
            # Registries SHOULD accept 4 MB and answer 413 above their limit (protocol.md §1.7,
            # U10); refuse before sending rather than stream megabytes into a 413.
            raise InvalidManifestError(
                f"{context}: manifest of {len(data)} bytes exceeds the "
                f"{MAX_MANIFEST_SIZE}-byte limit"
            )
        if tag is not None and not TAG_PATTERN.fullmatch(tag):
            raise InvalidReferenceError(f"{context}: invalid tag {tag[:130]!r}")
        try:
            verify_bytes(data, desc.digest, desc.size, what="manifest")
        except DigestMismatchError as exc:
            raise DigestMismatchError(f"{self.reference}: {exc}") from None
        response = await self.client.send(
            "PUT",
            self._path("manifests", tag or desc.digest),
            context=context,
            headers={"Content-Type": desc.media_type},
            body=data,
        )
        async with response:
            await self._expect(response, 201, context, None)
            check_stored(response.headers.get("Docker-Content-Digest"), desc.digest, context)

    @staticmethod
    async def _expect(
        response: Response, status: int, context: str, not_found: str | None
    ) -> None:
        """Raise the mapped error unless ``response`` has ``status``; ``not_found`` replaces
        the message of a 404."""
        if response.status == status:
            return
        error = await error_from_response(response, context)
        if not_found is not None and isinstance(error, NotFoundError):
            raise NotFoundError(not_found) from None
        raise error

    @staticmethod
    async def _read_manifest(response: Response, cap: int, context: str) -> bytes:
        announced = response.content_length
        if announced is not None and announced > cap:
            raise InvalidManifestError(
                f"{context}: the registry announces a manifest of {announced} bytes, "
                f"over the {cap}-byte cap"
            )
        data = await response.read(cap)
        if len(data) > cap:
            raise InvalidManifestError(f"{context}: manifest is larger than the {cap}-byte cap")
        return data

    @staticmethod
    def _expect_length(response: Response, size: int, context: str) -> None:
        # Content-Length is compared, never allocated from (P8).
        announced = response.content_length
        if announced is not None and announced != size:
            raise DigestMismatchError(
                f"{context}: the registry announces {announced} bytes, the descriptor says {size}"
            )
