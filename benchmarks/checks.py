"""Checks that a run did its job, so a tool that exits 0 without the work never gets a number.

Done after the timing: a pull must have written every config and layer with the right size
(and, for tools that write an OCI layout, tagged the source's root digest); a push or copy must
have left the tag in the destination repository (pointing at the source's root digest when the
tool preserves manifests byte for byte); curl-put must have created its blob.
"""

from __future__ import annotations

from benchmarks import registries
from benchmarks.peers.graph import layout_blob_path, layout_root
from benchmarks.tools import CurlPut, Job, LayoutRef, RemoteRef, Tool


def check(tool: Tool, job: Job) -> str | None:
    """None when the destination holds what the job asked for, else what is wrong."""
    if isinstance(job.dst, LayoutRef):
        return _check_layout(tool, job, job.dst)
    if isinstance(tool, CurlPut):
        blob = job.image.largest
        if not registries.has_blob(job.dst.address, job.dst.repo, blob.digest):
            return f"blob {blob.digest} missing after the PUT"
        return None
    return _check_registry(tool, job, job.dst)


def _check_layout(tool: Tool, job: Job, dst: LayoutRef) -> str | None:
    for blob in job.image.content:
        path = layout_blob_path(dst.path, blob)
        try:
            size = path.stat().st_size
        except OSError:
            return f"blob {blob.digest} missing in the output"
        if size != blob.size:
            return f"blob {blob.digest} has {size} bytes, expected {blob.size}"
    if tool.writes_layout:
        try:
            root = layout_root(dst.path, dst.tag)
        except (OSError, LookupError, ValueError) as exc:
            return f"no tag {dst.tag!r} in the output layout: {exc}"
        if root.digest != job.image.root:
            return f"tag {dst.tag!r} points to {root.digest}, expected {job.image.root}"
    return None


def _check_registry(tool: Tool, job: Job, dst: RemoteRef) -> str | None:
    digest = registries.manifest_digest(dst.address, dst.repo, dst.tag)
    if digest is None:
        return f"{dst.plain} missing after the run"
    if tool.preserves_digests and digest != job.image.root:
        return f"{dst.plain} is {digest}, expected {job.image.root}"
    return None
