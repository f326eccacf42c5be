"""Registry management: list repositories and tags, inspect and delete manifests.

A :class:`Registry` is one registry host and owns its HTTP session: the same stack as a copy
(retries, redirects, auth with the credentials given, else the Docker config). Use it as an
async context manager.

Listings (distribution-spec "Listing Tags", "Catalog") are paginated with ``n`` and followed
through ``Link: <...>; rel="next"`` headers: only links on the registry's own origin, at most
:data:`MAX_PAGES` pages, and never the same page twice. Deleting a tag deletes the manifest it
names, by digest, and with it every tag that points at that manifest (as ``skopeo delete``
does; distribution cannot delete a tag alone).
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any

from yarl import URL

from ociflow.closing import AsyncClosing
from ociflow.descriptor import Descriptor
from ociflow.digest import Digest
from ociflow.errors import InvalidReferenceError, NotFoundError, RegistryError
from ociflow.http.credentials import AzureAD, Credentials
from ociflow.http.errors import error_from_response
from ociflow.http.options import HttpOptions
from ociflow.http.redirect import origin
from ociflow.http.transport import Session
from ociflow.reference import RegistryReference, parse_docker_reference
from ociflow.targets.registry import RegistryTarget

MAX_PAGES = 10_000
MAX_PAGE_BYTES = 16 * 1024 * 1024
# RFC 8288: link-values separated by commas, each ``<target>`` then ``; name[=value]``
# parameters whose values may be quoted strings (holding commas and semicolons).
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_LINK_VALUE = re.compile(
    rf'\s*<([^>]*)>((?:\s*;\s*[^;,=\s]+\s*(?:=\s*(?:{_QUOTED}|[^;,\s]*))?)*)\s*(?:,|$)'
)
_PARAM = re.compile(rf';\s*([^;,=\s]+)\s*(?:=\s*({_QUOTED}|[^;,\s]*))?')


class Registry(AsyncClosing):
    """Management calls on one registry (``host[:port]``; ``docker.io`` for Docker Hub)."""

    def __init__(
        self,
        registry: str,
        *,
        credentials: Credentials | AzureAD | None = None,
        options: HttpOptions | None = None,
    ) -> None:
        registry = registry.removeprefix("docker://").rstrip("/")
        probe = parse_docker_reference(f"{registry}/x")
        # "alpine" would read as docker.io/alpine/x, "host/path" as a repository path
        if "/" in registry or probe.repository not in ("x", "library/x"):
            raise InvalidReferenceError(f"{registry!r} is not a registry host")
        self.registry = probe.registry
        base = options or HttpOptions()
        self.options = base if credentials is None else replace(base, credentials=credentials)
        self._session = Session(self.options, jobs=1)

    async def close(self) -> None:
        await self._session.close()

    def reference(self, text: str) -> RegistryReference:
        """``repo[:tag|@digest]`` on this registry, parsed (``docker.io`` normalised)."""
        return parse_docker_reference(f"{self.registry}/{text}")

    async def repositories(self, *, page_size: int | None = None) -> list[str]:
        """Every repository the registry lists (``/v2/_catalog``), in its order."""
        return await self._listing("/v2/_catalog", "repositories", page_size,
                                   f"{self.registry}: listing repositories")

    async def tags(self, repository: str, *, page_size: int | None = None) -> list[str]:
        """The tags of ``repository``, in the registry's order."""
        if names_version(repository):
            raise InvalidReferenceError(
                f"{self.registry}/{repository}: name a repository, without tag or digest"
            )
        ref = self.reference(repository)
        return await self._listing(f"/v2/{ref.repository}/tags/list", "tags", page_size,
                                   f"{ref.registry}/{ref.repository}: listing tags")

    async def manifest(self, reference: str) -> tuple[Descriptor, bytes]:
        """The descriptor and exact bytes of the manifest ``reference`` names, verified."""
        target = self._target(self.reference(reference))
        desc = await target.resolve()
        return desc, await target.fetch_manifest(desc)

    async def delete(self, reference: str) -> Digest:
        """Delete the manifest ``reference`` names (a tag is resolved to its digest first);
        returns the digest deleted. The tag or digest must be named: no implicit ``latest``."""
        if not names_version(reference):
            raise InvalidReferenceError(
                f"{self.registry}/{reference}: name the tag or digest to delete (every tag on "
                "that manifest goes with it)"
            )
        ref = self.reference(reference)
        digest = ref.digest or (await self._target(ref).resolve()).digest
        context = f"{ref}: deleting manifest {digest}"
        client = self._session.registry(ref, self.options)
        response = await client.send(
            "DELETE", f"/v2/{ref.repository}/manifests/{digest}", context=context
        )
        async with response:
            if response.status in (200, 202, 204):
                return Digest(digest)
            error = await error_from_response(response, context)
        if isinstance(error, RegistryError) and (
            response.status == 405 or "UNSUPPORTED" in error.codes
        ):
            raise RegistryError(f"{error} (the registry does not allow deletes)",
                                status=error.status, codes=error.codes) from None
        raise error

    def _target(self, ref: RegistryReference) -> RegistryTarget:
        return RegistryTarget(ref, self._session.registry(ref, self.options))

    async def _listing(
        self, path: str, key: str, page_size: int | None, context: str
    ) -> list[str]:
        client = self._session.registry(self.reference("x"), self.options)
        base = await client.base_url(context)
        url: URL | None = URL(f"{base}{path}", encoded=True)
        assert url is not None
        if page_size is not None:
            url = url.update_query({"n": str(page_size)})
        items: list[str] = []
        seen: set[str] = set()
        while url is not None:
            if str(url) in seen or len(seen) >= MAX_PAGES:
                raise RegistryError(f"{context}: the registry's pages do not end")
            seen.add(str(url))
            response = await client.send("GET", url, context=context)
            async with response:
                if response.status == 404:
                    raise NotFoundError(f"{context}: not found")
                if response.status != 200:
                    raise await error_from_response(response, context)
                body = await response.read(MAX_PAGE_BYTES)
                links = response.headers.getall("Link", [])
            items.extend(_page_items(body, key, context))
            url = _next_page(url, links, context)
        return items


def names_version(reference: str) -> bool:
    """Whether ``reference`` is written with a tag or digest: an ``@``, or a ``:`` in its last
    path component (a ``:`` before that is a registry's port)."""
    return "@" in reference or ":" in reference.rsplit("/", 1)[-1]


def _page_items(body: bytes, key: str, context: str) -> list[str]:
    if len(body) > MAX_PAGE_BYTES:
        raise RegistryError(f"{context}: a page of the listing is over {MAX_PAGE_BYTES} bytes")
    try:
        obj: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        obj = None
    values = obj.get(key) if isinstance(obj, dict) else None
    if values is None and isinstance(obj, dict):
        return []  # distribution answers an empty repository with "tags": null
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise RegistryError(f"{context}: the registry's answer has no list of {key}")
    return values


def next_link(values: list[str]) -> str | None:
    """The target of the first ``Link`` whose ``rel`` holds the token ``next``."""
    for value in values:
        for link in _LINK_VALUE.finditer(value):
            for name, raw in _PARAM.findall(link.group(2)):
                if name.lower() != "rel":
                    continue
                rel = raw[1:-1].replace('\\"', '"') if raw.startswith('"') else raw
                if "next" in rel.lower().split():
                    return link.group(1)
    return None


def _next_page(current: URL, links: list[str], context: str) -> URL | None:
    found = next_link(links)
    if found is not None:
        try:
            target = current.join(URL(found, encoded=True))
        except ValueError:
            target = None
        if target is None or origin(target) != origin(current):
            raise RegistryError(f"{context}: refusing a next-page link to another origin")
        return target
    return None
