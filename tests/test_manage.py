"""Registry management against the real registry: catalog, tags, inspect, delete (the Python
API and the CLI), paginated listings, and the errors a user can meet."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import ociflow
from ociflow.errors import InvalidReferenceError, NotFoundError, RegistryError
from ociflow.manage import Registry
from tests.conftest import PASSWORDS
from tests.fault_proxy import Fault, FaultProxy
from tests.layouts import tagged, tagged_manifest
from tests.registry_server import RegistryServer

pytestmark = pytest.mark.integration


def layout_manifest(layout: Path, tag: str) -> tuple[str, bytes]:
    return tagged(layout, tag)["digest"], tagged_manifest(layout, tag)


async def push(registry: RegistryServer, sample: Path, repo: str, *tags: str) -> None:
    for tag in tags:
        await ociflow.copy(f"oci:{sample}:1.0", f"docker://{registry.address}/{repo}:{tag}")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ociflow", *args], capture_output=True,
                          text=True, timeout=120)


async def test_catalog_and_tags_follow_every_page(
    registry: RegistryServer, sample_layout: Path, repo: str
) -> None:
    await push(registry, sample_layout, f"{repo}/a", "1.0", "1.1", "2.0")
    await push(registry, sample_layout, f"{repo}/b", "x")
    async with FaultProxy(registry.url) as proxy, Registry(proxy.address) as reg:
        # distribution 2.8 pages its catalog (n, Link) but answers tags in one page
        tags = await reg.tags(f"{repo}/a", page_size=1)
        assert sorted(tags) == ["1.0", "1.1", "2.0"]
        assert "n=1" in proxy.entries("GET", "/tags/list")[0].query
        repositories = await reg.repositories(page_size=1)
        assert {f"{repo}/a", f"{repo}/b"} <= set(repositories)
        assert len(repositories) == len(set(repositories))
        pages = proxy.entries("GET", "/_catalog")
        assert len(pages) >= len(repositories) and all("n=1" in p.query for p in pages)
        assert await reg.repositories() == repositories  # one page, the registry's size


async def test_inspect_returns_the_exact_manifest(
    registry: RegistryServer, sample_layout: Path, repo: str
) -> None:
    await push(registry, sample_layout, repo, "1.0")
    digest, data = layout_manifest(sample_layout, "1.0")
    async with Registry(registry.address) as reg:
        desc, got = await reg.manifest(f"{repo}:1.0")
        assert (desc.digest, got) == (digest, data)
        by_digest = await reg.manifest(f"{repo}@{digest}")
        assert by_digest[1] == data


async def test_delete_by_tag_removes_the_manifest_and_its_tags(
    registry: RegistryServer, sample_layout: Path, repo: str
) -> None:
    await push(registry, sample_layout, repo, "1.0", "same")
    digest, _ = layout_manifest(sample_layout, "1.0")
    async with Registry(registry.address) as reg:
        assert await reg.delete(f"{repo}:1.0") == digest
        for ref in (f"{repo}:1.0", f"{repo}:same", f"{repo}@{digest}"):
            with pytest.raises(NotFoundError):
                await reg.manifest(ref)
        with pytest.raises(NotFoundError):
            await reg.delete(f"{repo}:1.0")


async def test_errors_are_clear(registry: RegistryServer, sample_layout: Path, repo: str) -> None:
    await push(registry, sample_layout, repo, "1.0")
    with pytest.raises(InvalidReferenceError, match="not a registry host"):
        Registry("alpine")
    async with FaultProxy(registry.url) as proxy, Registry(proxy.address) as reg:
        with pytest.raises(InvalidReferenceError, match="without tag or digest"):
            await reg.tags(f"{repo}:1.0")
        with pytest.raises(InvalidReferenceError, match="name the tag or digest"):
            await reg.delete(repo)
        with pytest.raises(NotFoundError):
            await reg.tags(f"{repo}/missing")
        body = json.dumps({"errors": [{"code": "UNSUPPORTED", "message": "no"}]}).encode()
        proxy.add("DELETE", "/manifests/", Fault(status=405, body=body))
        with pytest.raises(RegistryError, match="does not allow deletes"):
            await reg.delete(f"{repo}:1.0")
        proxy.add("GET", "/tags/list", Fault(headers={"Link": '<http://evil.example/v2/x/tags/'
                                                               'list?n=1>; rel="next"'}))
        with pytest.raises(RegistryError, match="another origin"):
            await reg.tags(repo)


def test_cli_catalog_tags_inspect_delete(
    registry: RegistryServer, sample_layout: Path, repo: str
) -> None:
    ociflow.copy_sync(f"oci:{sample_layout}:1.0", f"docker://{registry.address}/{repo}:1.0")
    digest, data = layout_manifest(sample_layout, "1.0")
    tags = run_cli("tags", f"{registry.address}/{repo}")
    assert tags.returncode == 0 and tags.stdout == "1.0\n", tags.stderr
    catalog = run_cli("catalog", "--json", registry.address)
    assert repo in json.loads(catalog.stdout)
    inspected = run_cli("inspect", f"docker://{registry.address}/{repo}:1.0")
    doc = json.loads(inspected.stdout)
    assert doc["digest"] == digest and doc["size"] == len(data)
    assert doc["manifest"] == json.loads(data)
    raw = subprocess.run([sys.executable, "-m", "ociflow", "inspect", "--raw",
                          f"{registry.address}/{repo}:1.0"], capture_output=True, timeout=120)
    assert raw.stdout == data
    implicit = run_cli("delete", f"{registry.address}/{repo}")
    assert implicit.returncode == 1 and "name the tag or digest" in implicit.stderr
    deleted = run_cli("delete", "--json", f"{registry.address}/{repo}:1.0")
    assert json.loads(deleted.stdout)["deleted"] == digest
    gone = run_cli("inspect", f"{registry.address}/{repo}:1.0")
    assert gone.returncode == 1 and gone.stderr.count("\n") == 1 and "not found" in gone.stderr


def test_cli_management_with_credentials(
    token_servers: tuple[RegistryServer, object], sample_layout: Path, repo: str
) -> None:
    from tests.auth_servers import TokenPolicy, TokenServer

    registry, tokens = token_servers
    assert isinstance(tokens, TokenServer)
    tokens.reset(TokenPolicy(users=dict(PASSWORDS)))
    creds = f"alice:{PASSWORDS['alice']}"
    ociflow.copy_sync(f"oci:{sample_layout}:1.0", f"docker://{registry.address}/{repo}:1.0",
                      dst_credentials=ociflow.Credentials("alice", PASSWORDS["alice"]))
    refused = run_cli("tags", f"{registry.address}/{repo}")
    assert refused.returncode == 1 and "401" in refused.stderr
    listed = run_cli("tags", "--creds", creds, f"{registry.address}/{repo}")
    assert listed.stdout == "1.0\n", listed.stderr
    catalog = run_cli("catalog", "--creds", creds, "--json", registry.address)
    assert repo in json.loads(catalog.stdout), catalog.stderr
    deleted = run_cli("delete", "--creds", creds, f"{registry.address}/{repo}:1.0")
    assert deleted.returncode == 0 and "Deleted" in deleted.stdout, deleted.stderr
    assert any(s.endswith(":delete") for e in tokens.journal() for s in e.scopes)


@pytest.mark.parametrize(
    ("header", "target"),
    [
        ('</v2/x/tags/list?n=1&last=a>; rel="next"', "/v2/x/tags/list?n=1&last=a"),
        ('</a>; rel="prev next"', "/a"),
        ('</b>; rel = "next"', "/b"),
        ('</c>; title="a, b; c"; rel="next"', "/c"),
        ('</f>; rel=prev, </g>; rel=next', "/g"),
        ('</h>; rel=NEXT', "/h"),
        ('</d>; rel="nextpage"', None),
        ('</e>; rel=next-archive', None),
        ('</i>; title="rel=next"', None),
    ],
)
def test_next_page_links_follow_rfc_8288(header: str, target: str | None) -> None:
    from ociflow.manage import next_link

    assert next_link([header]) == target


def test_a_registry_is_a_host_without_a_path() -> None:
    for text in ("localhost:5000/library", "docker.io/library", "alpine"):
        with pytest.raises(InvalidReferenceError, match="not a registry host"):
            Registry(text)
    assert Registry("docker://localhost:5000/").registry == "localhost:5000"
