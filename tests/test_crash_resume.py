"""Resume after a crash (issue 4; reliability.md P20, L1, L7, U15, C5).

``ociflow copy`` runs as a real process (``python -m ociflow``), is killed (SIGKILL) or
interrupted (SIGINT) at about 60 % of a 200 MiB blob, and is run again: the proxy's journal
shows that the second run continued — ``Range: bytes=N-`` from the partial file for a pull; a
``GET`` of the recorded upload session and PATCHes from its offset for a push — and moved less
than half the blob, and the result verifies (by hash, and by skopeo for a push). Smaller
in-process tests cover the partial files' rules (a wrong partial, one too long, one another
writer holds, a full disk) and the journal's (entries that must not be trusted, expiry,
permissions, two writing processes).

Kill points are made deterministic by the proxy, never by timing alone: a throttled answer, a
throttled request body, or a request held unforwarded. The last two are faults of this file
(the lead's proxy throttles answers only, and its ``delay`` forwards the request once the delay
is over, even when the client died meanwhile: aiohttp stops reading an unread body, so it never
notices the disconnect): :class:`SlowUpload` and :class:`Hold`.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import hashlib
import json
import math
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

import ociflow
from bench_data.generate import generate
from ociflow.digest import Digest
from ociflow.errors import LayoutError
from ociflow.http.options import HttpOptions
from ociflow.journal import JOURNAL_FILE, UploadJournal, source_id
from ociflow.reference import LayoutReference
from ociflow.targets import fsutil
from ociflow.targets.blob_upload import UploadSession
from tests.fault_proxy import Entry, Fault, FaultProxy, _reset
from tests.registry_server import RegistryServer

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
BIG_MIB = 200
CHUNK = 8 * MiB
REPO_ROOT = Path(__file__).resolve().parent.parent
UPLOADS = r"/blobs/uploads/"
PLAIN = HttpOptions(plain_http=True)
INTERRUPTED = "run the same command again to continue"
_HOP = {"transfer-encoding", "content-length", "connection", "keep-alive", "host"}


# ---- the proxy, with one more fault ---------------------------------------------------------


@dataclass
class SlowUpload(Fault):
    """Forward the request, reading its body at ``rate`` bytes per second."""

    rate: int = 0


@dataclass
class Hold(Fault):
    """Forward nothing; once ``released`` is set, reset the connection."""

    released: asyncio.Event = field(default_factory=asyncio.Event)


class Proxy(FaultProxy):
    async def _serve(
        self, request: web.Request, fault: Fault, entry: Entry
    ) -> web.StreamResponse:
        if isinstance(fault, SlowUpload):
            return await self._forward_slowly(request, fault, entry)
        if isinstance(fault, Hold):
            entry.status = -1
            await fault.released.wait()
            _reset(request)
            raise asyncio.CancelledError
        return await super()._serve(request, fault, entry)

    async def _forward_slowly(
        self, request: web.Request, fault: SlowUpload, entry: Entry
    ) -> web.StreamResponse:
        assert self._client is not None

        async def body() -> AsyncIterator[bytes]:
            async for chunk in request.content.iter_chunked(64 * 1024):
                entry.received += len(chunk)
                yield chunk
                await asyncio.sleep(len(chunk) / fault.rate)

        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        headers["Host"] = request.headers["Host"]  # Location URLs must point at the proxy
        if "Content-Length" in request.headers:
            headers["Content-Length"] = request.headers["Content-Length"]
        async with self._client.request(
            request.method,
            f"{self.upstream}{request.path_qs}",
            headers=headers,
            data=body(),
            allow_redirects=False,
        ) as upstream:
            entry.status = upstream.status
            data = await upstream.read()
            out = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP}
            return web.Response(status=upstream.status, headers=out, body=data)


@pytest.fixture()
async def proxy(registry: RegistryServer) -> AsyncIterator[Proxy]:
    async with Proxy(registry.url) as running:
        yield running


# ---- images ---------------------------------------------------------------------------------


def _scratch_parent() -> str | None:
    """tmpfs when there is one: hundreds of MiB are written and read back in each test."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


@dataclass(frozen=True)
class Image:
    """A one-layer image in an OCI layout (tag ``1``), as bench_data.generate writes it."""

    layout: Path
    manifest: bytes
    layer: Digest
    size: int

    @classmethod
    def make(cls, layout: Path, mib: int, seed: int) -> Image:
        generate("big", layout, tag="1", big_mib=mib, seed=seed)
        index = json.loads((layout / "index.json").read_text())
        manifest = blob_file(layout, Digest(index["manifests"][0]["digest"])).read_bytes()
        (layer,) = json.loads(manifest)["layers"]
        return cls(layout, manifest, Digest(layer["digest"]), layer["size"])

    @property
    def source(self) -> str:
        return f"oci:{self.layout}:1"


@pytest.fixture(scope="module")
def scratch_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="ociflow-crash-", dir=_scratch_parent()))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def big(scratch_root: Path) -> Image:
    return Image.make(scratch_root / "big", BIG_MIB, seed=20)


@pytest.fixture(scope="module")
def small(scratch_root: Path) -> Image:
    return Image.make(scratch_root / "small", 10, seed=21)  # three 4 MiB chunks or more


def _push(image: Image, registry: RegistryServer, repo: str) -> str:
    """Push ``image`` straight into the registry (not through a proxy); return ``repo``."""
    ociflow.copy_sync(image.source, f"docker://{registry.address}/{repo}:1", options=PLAIN,
                      resume=False)
    return repo


@pytest.fixture(scope="module")
def big_repo(big: Image, registry: RegistryServer) -> str:
    return _push(big, registry, "crash/big")


@pytest.fixture(scope="module")
def small_repo(small: Image, registry: RegistryServer) -> str:
    return _push(small, registry, "crash/small")


@pytest.fixture()
def scratch(scratch_root: Path) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="t-", dir=scratch_root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# ---- layouts --------------------------------------------------------------------------------


def blob_file(layout: Path, digest: Digest) -> Path:
    return layout / "blobs" / digest.algorithm / digest.encoded


def partial_file(layout: Path, digest: Digest) -> Path:
    return layout / ".ociflow-ingest" / f"{digest.algorithm}-{digest.encoded}.partial"


def file_digest(path: Path) -> str:
    with path.open("rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


def check_layout(layout: Path) -> None:
    """P20/L1: every file at a blob path is complete and verified; index.json refers to no
    missing blob (manifests followed down to their config and layers)."""
    blobs = layout / "blobs" / "sha256"
    for path in blobs.iterdir() if blobs.is_dir() else []:
        assert file_digest(path) == f"sha256:{path.name}", f"unverified blob at {path}"
    index = layout / "index.json"
    pending = json.loads(index.read_text())["manifests"] if index.exists() else []
    while pending:
        desc = pending.pop()
        path = blob_file(layout, Digest(desc["digest"]))
        assert path.is_file(), f"index.json refers to a missing blob {desc['digest']}"
        if "manifest" in desc["mediaType"] or "index" in desc["mediaType"]:
            document = json.loads(path.read_bytes())
            pending += [document["config"], *document["layers"]] if "config" in document else []
            pending += document.get("manifests", [])


# ---- running the CLI ------------------------------------------------------------------------


# ``python -m ociflow``, with SIGINT handled as in a terminal's foreground process: a test run
# started in the background by a shell inherits SIGINT *ignored*, and Python keeps it so.
_LAUNCH = (
    "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_module('ociflow', run_name='__main__', alter_sys=True)"
)


async def start(state: Path, *args: str) -> asyncio.subprocess.Process:
    """``ociflow copy --plain-http --json ARGS`` as a child process, its journal in ``state``."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OCIFLOW_STATE_DIR": str(state)}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", _LAUNCH, "copy", "--plain-http", "--json", *args,
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


async def finish(process: asyncio.subprocess.Process) -> tuple[int, str, str]:
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def until(
    condition: Callable[[], bool], process: asyncio.subprocess.Process, what: str
) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        if process.returncode is not None:
            _, stderr = await process.communicate()
            pytest.fail(f"ociflow exited ({process.returncode}) before {what}: {stderr!r}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def interrupt(process: asyncio.subprocess.Process) -> tuple[int, str, float]:
    """SIGINT; the exit code, stderr, and the seconds until the process was gone."""
    began = time.monotonic()
    process.send_signal(signal.SIGINT)
    code, _, stderr = await finish(process)
    return code, stderr, time.monotonic() - began


def assert_interrupted(code: int, stderr: str, seconds: float) -> None:
    """C5: out within a couple of seconds (a generous bound: promptness, not speed), exit code
    130, and one line saying the copy was interrupted and can be continued."""
    assert code == 130, stderr
    assert seconds < 5
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert "interrupted" in lines[0] and INTERRUPTED in lines[0]


# ---- pull: killed or interrupted, continued from the partial file (P20, L1) -----------------


def layer_gets(proxy: FaultProxy, image: Image) -> list[Entry]:
    return proxy.entries("GET", f"/blobs/{image.layer}$")


async def start_slow_pull(
    proxy: FaultProxy, image: Image, repo: str, out: Path, state: Path
) -> asyncio.subprocess.Process:
    """A pull whose layer arrives at 50 MiB/s, stopped by the caller at 60 %."""
    proxy.add("GET", f"/blobs/{image.layer}$", Fault(throttle=50 * MiB))
    process = await start(state, f"docker://{proxy.address}/{repo}:1", f"oci:{out}:1")
    await until(lambda: sum(e.sent for e in layer_gets(proxy, image)) >= 0.6 * image.size,
                process, "60 % of the layer")
    return process


async def check_pull_resumes(
    proxy: FaultProxy, image: Image, repo: str, out: Path, state: Path
) -> None:
    """After an interruption: nothing unverified at a final path, a partial file beside the
    layout; then the same command continues from it and moves less than half the blob."""
    final, partial = blob_file(out, image.layer), partial_file(out, image.layer)
    assert not final.exists()
    held = partial.stat().st_size
    assert image.size / 2 < held < image.size
    check_layout(out)

    proxy.rules.clear()
    proxy.journal.clear()
    code, stdout, stderr = await finish(
        await start(state, f"docker://{proxy.address}/{repo}:1", f"oci:{out}:1")
    )
    assert code == 0, stderr
    gets = layer_gets(proxy, image)
    assert gets[0].range == f"bytes={held}-"
    assert gets[0].status == 206
    assert sum(e.sent for e in gets) == image.size - held < image.size / 2
    assert json.loads(stdout)["bytesTransferred"] < image.size / 2
    assert file_digest(final) == image.layer
    assert not partial.exists() and not (out / ".ociflow-ingest").exists()
    check_layout(out)


async def test_killed_pull_continues_from_its_partial_file(
    proxy: Proxy, big: Image, big_repo: str, scratch: Path, tmp_path: Path
) -> None:
    out = scratch / "out"
    process = await start_slow_pull(proxy, big, big_repo, out, tmp_path)
    process.kill()
    assert await process.wait() == -signal.SIGKILL
    await check_pull_resumes(proxy, big, big_repo, out, tmp_path)


async def test_interrupted_pull_exits_promptly_and_continues(
    proxy: Proxy, big: Image, big_repo: str, scratch: Path, tmp_path: Path
) -> None:
    out = scratch / "out"
    process = await start_slow_pull(proxy, big, big_repo, out, tmp_path)
    assert_interrupted(*await interrupt(process))
    await check_pull_resumes(proxy, big, big_repo, out, tmp_path)


# ---- push: interrupted or killed, continued from the recorded session (U15) -----------------


def journal_entries(state: Path) -> list[dict[str, Any]]:
    path = state / JOURNAL_FILE
    if not path.exists():
        return []
    entries: list[dict[str, Any]] = json.loads(path.read_text())["uploads"]
    return entries


def recorded_offset(state: Path, digest: Digest) -> int:
    try:
        entries = journal_entries(state)
    except ValueError:  # pragma: no cover - the file is replaced atomically; never torn
        return 0
    return max((e["offset"] for e in entries if e["digest"] == digest), default=0)


def upload_bytes(proxy: FaultProxy) -> int:
    """Blob bytes the registry was sent (PATCH and PUT bodies on upload sessions)."""
    return sum(e.received for m in ("PATCH", "PUT") for e in proxy.entries(m, UPLOADS))


def push_args(image: Image, proxy: FaultProxy, repo: str) -> list[str]:
    return ["--chunk-size", "8MiB", image.source, f"docker://{proxy.address}/{repo}:1"]


async def check_push_resumes(
    proxy: FaultProxy,
    registry: RegistryServer,
    skopeo: str,
    image: Image,
    repo: str,
    state: Path,
) -> None:
    """The journal holds the layer's session (0600, nothing but the documented fields); the
    same command continues it from the registry's offset, and the registry has the image."""
    journal = state / JOURNAL_FILE
    assert stat.S_IMODE(journal.stat().st_mode) == 0o600
    (entry,) = [e for e in journal_entries(state) if e["digest"] == image.layer]
    assert set(entry) == {"registry", "repository", "digest", "size", "offset", "location",
                          "source", "updated"}
    assert entry["source"] == f"oci:{image.layout}:1" and entry["size"] == image.size
    offset = entry["offset"]
    assert image.size / 2 < offset < image.size and offset % CHUNK == 0
    session = URL(entry["location"]).path

    proxy.rules.clear()
    proxy.journal.clear()
    code, _, stderr = await finish(await start(state, *push_args(image, proxy, repo)))
    assert code == 0, stderr
    on_session = [(e.method, e.status) for e in proxy.journal if e.path == session]
    assert on_session[0] == ("GET", 204)  # the recorded session, asked where it stands
    assert proxy.count("POST", UPLOADS) == 0  # not a new upload
    # (The source is read again from byte 0, to verify every byte; only the rest is sent.)
    assert upload_bytes(proxy) == image.size - offset < image.size / 2
    assert journal_entries(state) == []  # removed once committed

    async with aiohttp.ClientSession() as http, http.head(
        f"{registry.url}/v2/{repo}/blobs/{image.layer}"
    ) as response:
        assert response.status == 200
        assert response.content_length == image.size
    inspected = subprocess.run(
        [skopeo, "inspect", "--raw", "--tls-verify=false", f"docker://{registry.address}/{repo}:1"],
        capture_output=True, check=True, timeout=60,
    )
    assert inspected.stdout == image.manifest


async def test_interrupted_push_lands_its_chunk_and_continues(
    proxy: Proxy, registry: RegistryServer, skopeo: str, big: Image, repo: str, tmp_path: Path
) -> None:
    # 40 MiB/s: a chunk of 8 MiB is on the wire for 0.2 s, well within the second a cancelled
    # upload gives the chunk in flight to land.
    proxy.add("PATCH", UPLOADS, SlowUpload(rate=40 * MiB))
    process = await start(tmp_path, *push_args(big, proxy, repo))
    await until(lambda: upload_bytes(proxy) >= 0.6 * big.size, process, "60 % of the layer")
    assert_interrupted(*await interrupt(process))
    patches = proxy.entries("PATCH", UPLOADS)
    # Every chunk that was sent landed whole (none was cut, which distribution would not
    # forgive), and the journal says so.
    assert all(e.status == 202 for e in patches)
    assert recorded_offset(tmp_path, big.layer) == len(patches) * CHUNK
    await check_push_resumes(proxy, registry, skopeo, big, repo, tmp_path)


async def test_push_killed_between_chunks_continues(
    proxy: Proxy, registry: RegistryServer, skopeo: str, big: Image, repo: str, tmp_path: Path
) -> None:
    # The first PATCH starting past 60 % is held by the proxy, unforwarded: the kill falls
    # between two chunks as far as the registry can tell.
    held = math.ceil(0.6 * big.size / CHUNK) + 1
    hold = Hold()
    proxy.add("PATCH", UPLOADS, hold, attempts={held})
    process = await start(tmp_path, *push_args(big, proxy, repo))
    try:
        await until(
            lambda: proxy.count("PATCH", UPLOADS) >= held
            and recorded_offset(tmp_path, big.layer) >= 0.6 * big.size,
            process,
            "the held chunk",
        )
        process.kill()
        assert await process.wait() == -signal.SIGKILL
    finally:
        hold.released.set()
    await check_push_resumes(proxy, registry, skopeo, big, repo, tmp_path)


# ---- the journal: entries not to be trusted, expiry, permissions, two processes -------------


async def open_session(proxy: FaultProxy, repo: str) -> str:
    """A real upload session on ``repo`` (through the proxy): its absolute Location."""
    url = f"http://{proxy.address}/v2/{repo}/blobs/uploads/"
    async with aiohttp.ClientSession() as http, http.post(url) as response:
        assert response.status == 202
        return str(URL(url).join(URL(response.headers["Location"], encoded=True)))


@pytest.mark.parametrize("mismatch", ["source", "size", "digest", "expired"])
async def test_untrustworthy_journal_entries_are_ignored(
    proxy: Proxy, small: Image, repo: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    mismatch: str,
) -> None:
    monkeypatch.setenv("OCIFLOW_STATE_DIR", str(tmp_path))
    # A live session on the right registry and repository: trusting the entry would mean a
    # GET of it and PATCHes into it instead of a new POST.
    location = await open_session(proxy, repo)
    entry = {
        "registry": proxy.address,
        "repository": repo,
        "digest": str(small.layer),
        "size": small.size,
        "offset": 0,
        "location": location,
        "source": source_id(LayoutReference(str(small.layout), "1")),
        "updated": time.time(),
    }
    other = {
        "source": {"source": f"oci:{small.layout}-elsewhere:1"},
        "size": {"size": small.size + 1},
        "digest": {"digest": str(Digest.of(b"another blob"))},
        "expired": {"updated": time.time() - 25 * 3600},
    }[mismatch]
    entry.update(other)
    (tmp_path / JOURNAL_FILE).write_text(json.dumps({"version": 1, "uploads": [entry]}))
    proxy.journal.clear()

    await ociflow.copy(small.source, f"docker://{proxy.address}/{repo}:1", options=PLAIN)

    assert not [e for e in proxy.journal if e.path == URL(location).path]
    assert proxy.count("POST", UPLOADS) == 2  # config and layer, each a new upload
    # Replaced by this run's own session, then forgotten; an entry of another blob is left.
    left = [e["digest"] for e in journal_entries(tmp_path)]
    assert left == ([entry["digest"]] if mismatch == "digest" else [])


def session(repo: str, n: int, offset: int = 0) -> UploadSession:
    location = f"https://registry.test:5000/v2/{repo}/blobs/uploads/{n}?_state=s"
    digest = Digest.of(f"blob {n}".encode())
    return UploadSession(f"registry.test:5000/{repo}", digest, 100, location, offset)


def test_journal_records_finds_expires_and_forgets(tmp_path: Path) -> None:
    now = [1_000_000.0]
    journal = UploadJournal(tmp_path / "state", max_age=60, clock=lambda: now[0])
    mine, theirs = journal.for_source("oci:/a:1"), journal.for_source("oci:/b:1")
    assert mine.find("registry.test:5000/r", session("r", 1).digest) is None
    assert not (tmp_path / "state").exists()  # nothing created before something is recorded

    mine.record(session("r", 1))
    mine.record(session("r", 1, offset=50))  # one entry per blob: replaced
    assert mine.find("registry.test:5000/r", session("r", 1).digest) == session("r", 1, 50)
    assert theirs.find("registry.test:5000/r", session("r", 1).digest) is None
    assert mine.find("registry.test:5000/other", session("r", 1).digest) is None
    state = tmp_path / "state"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / JOURNAL_FILE).stat().st_mode) == 0o600

    now[0] += 61  # expired: no longer found, and pruned by the next change
    assert mine.find("registry.test:5000/r", session("r", 1).digest) is None
    mine.record(session("r", 2))
    assert [e.digest for e in journal.entries()] == [session("r", 2).digest]
    assert len(journal_entries(state)) == 1

    mine.forget("registry.test:5000/r", session("r", 2).digest)
    assert journal_entries(state) == []


def test_corrupt_journal_is_replaced(tmp_path: Path) -> None:
    (tmp_path / JOURNAL_FILE).write_bytes(b"\x00{ not json")
    store = UploadJournal(tmp_path).for_source("s")
    assert store.find("registry.test:5000/r", session("r", 1).digest) is None
    store.record(session("r", 1))
    assert [e["offset"] for e in journal_entries(tmp_path)] == [0]


_RECORDER = textwrap.dedent(
    """
    import sys
    from ociflow.digest import Digest
    from ociflow.journal import UploadJournal
    from ociflow.targets.blob_upload import UploadSession

    store = UploadJournal(sys.argv[1]).for_source("s")
    for i in range(int(sys.argv[3])):
        digest = Digest.of(f"{sys.argv[2]}{i}".encode())
        store.record(UploadSession("r.test/x", digest, 10, "https://r.test/u?_state=s", 0))
    """
)


def test_two_processes_recording_lose_no_entries(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    count = 30
    writers = [
        subprocess.Popen([sys.executable, "-c", _RECORDER, str(tmp_path), name, str(count)],
                         env=env, stderr=subprocess.PIPE)
        for name in ("a", "b")
    ]
    for writer in writers:
        _, stderr = writer.communicate(timeout=60)
        assert writer.returncode == 0, stderr.decode()
    assert len(journal_entries(tmp_path)) == 2 * count


# ---- partial files: wrong, too long, in use, disk full (P5, P20, L3, L7) --------------------


def plant_partial(layout: Path, digest: Digest, data: bytes) -> Path:
    """A partial file as a killed run would have left it in a new layout."""
    path = partial_file(layout, digest)
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    return path


async def pull(proxy: FaultProxy, repo: str, out: Path) -> ociflow.CopyResult:
    return await ociflow.copy(f"docker://{proxy.address}/{repo}:1", f"oci:{out}:1",
                              options=PLAIN)


async def test_wrong_partial_is_discarded_and_fetched_again_from_zero(
    proxy: Proxy, small: Image, small_repo: str, tmp_path: Path
) -> None:
    good = blob_file(small.layout, small.layer).read_bytes()
    out = tmp_path / "out"
    bad = bytearray(good[: 2 * MiB])
    bad[100] ^= 0xFF
    plant_partial(out, small.layer, bytes(bad))
    await pull(proxy, small_repo, out)
    # The resumed blob failed verification as a whole; the partial was gone before the one
    # re-fetch, which started from byte 0.
    assert [e.range for e in layer_gets(proxy, small)] == [f"bytes={2 * MiB}-", None]
    assert file_digest(blob_file(out, small.layer)) == small.layer
    assert not partial_file(out, small.layer).exists()
    check_layout(out)


async def test_partial_longer_than_the_blob_is_discarded(
    proxy: Proxy, small: Image, small_repo: str, tmp_path: Path
) -> None:
    good = blob_file(small.layout, small.layer).read_bytes()
    out = tmp_path / "out"
    plant_partial(out, small.layer, good + b"more")
    await pull(proxy, small_repo, out)
    assert [e.range for e in layer_gets(proxy, small)] == [None]
    assert file_digest(blob_file(out, small.layer)) == small.layer
    check_layout(out)


async def test_partial_in_use_by_another_writer_is_left_alone(
    proxy: Proxy, small: Image, small_repo: str, tmp_path: Path
) -> None:
    good = blob_file(small.layout, small.layer).read_bytes()
    out = tmp_path / "out"
    theirs = plant_partial(out, small.layer, good[:MiB])
    with theirs.open("rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another process writing this blob
        await pull(proxy, small_repo, out)
        # This process wrote a private copy from byte 0; the other one's file is untouched.
        assert [e.range for e in layer_gets(proxy, small)] == [None]
        assert theirs.read_bytes() == good[:MiB]
    assert file_digest(blob_file(out, small.layer)) == small.layer
    assert sorted(p.name for p in theirs.parent.iterdir()) == [theirs.name]


async def test_disk_full_fails_cleanly_without_retrying(
    proxy: Proxy, small: Image, small_repo: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # L7. A real full filesystem needs a mount this test cannot make: the layout's writes of
    # blob chunks fail with ENOSPC from the third on (small files such as index.json still
    # fit), so the partial file holds data when the error comes.
    real = fsutil.write_all
    chunks = 0

    def write_all(fd: int, data: bytes | memoryview) -> None:
        nonlocal chunks
        if len(data) >= 64 * 1024:
            chunks += 1
            if chunks > 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd, data)

    monkeypatch.setattr(fsutil, "write_all", write_all)
    out = tmp_path / "out"
    with pytest.raises(LayoutError, match=rf"oci:{out}: writing blob {small.layer}: No space"):
        await pull(proxy, small_repo, out)
    assert len(layer_gets(proxy, small)) == 1  # no retry, no re-fetch
    assert not blob_file(out, small.layer).exists()
    assert not partial_file(out, small.layer).exists()
    check_layout(out)


async def test_stale_partial_files_are_swept(small: Image, tmp_path: Path) -> None:
    out = tmp_path / "out"
    await ociflow.copy(small.source, f"oci:{out}:1")
    ingest = out / ".ociflow-ingest"
    ingest.mkdir()
    fresh = ingest / f"sha256-{'a' * 64}.partial"
    old = ingest / f"sha256-{'b' * 64}.partial"
    done = partial_file(out, small.layer)  # its blob is complete: useless
    for path in (fresh, old, done):
        path.write_bytes(b"partial")
    week = 8 * 24 * 3600
    os.utime(old, (time.time() - week, time.time() - week))
    await ociflow.copy(small.source, f"oci:{out}:2")
    assert sorted(p.name for p in ingest.iterdir()) == [fresh.name]


def test_no_resume_flag(tmp_path: Path) -> None:
    from ociflow.cli import _parser

    assert _parser().parse_args(["copy", "a", "b"]).resume is True
    assert _parser().parse_args(["copy", "--no-resume", "a", "b"]).resume is False

