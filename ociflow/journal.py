"""The on-disk journal of open upload sessions, so that a killed or interrupted push continues.

:class:`UploadJournal` keeps one small JSON file; :meth:`UploadJournal.for_source` hands out a
:class:`~ociflow.targets.blob_upload.SessionStore` bound to the source being copied, which the
copy engine gives to registry destinations (``copy(..., resume=True)``, the default; the CLI's
``--no-resume`` turns it off).

*Where.* ``<state dir>/uploads.json``, the state directory being the one given to
:class:`UploadJournal`, else ``$OCIFLOW_STATE_DIR``, else ``$XDG_STATE_HOME/ociflow`` (an
absolute ``XDG_STATE_HOME`` only, as the XDG spec says), else ``~/.local/state/ociflow``.

*Format* (``"version": 1``)::

    {"version": 1,
     "uploads": [
       {"registry": "localhost:5000",           # host[:port] the API is served on
        "repository": "team/app",
        "digest": "sha256:…",                    # the blob being uploaded
        "size": 209725440,                       # its size
        "offset": 134217728,                     # bytes the registry confirmed
        "location": "http://localhost:5000/v2/team/app/blobs/uploads/…?_state=…",
        "source": "oci:/abs/path/layout:1.0",    # what the blob was copied from
        "updated": 1733243000.5}]}               # Unix time of the last change

At most one entry per (registry, repository, digest). An entry is written when a session
opens and after every chunk the registry accepts, and removed once the blob is committed or the
session abandoned.

*Trust.* An entry is only a hint: the uploader checks the session with ``GET <location>`` and
continues from the offset the *registry* reports, never from the recorded one; an entry the
registry no longer knows is dropped. Entries older than :data:`MAX_AGE` are ignored and pruned
(registries purge idle sessions too); an entry of another source, or of another size (checked by
the uploader), is ignored and never sent anything; a location on another origin than the
registry is refused by the uploader. A file that does not parse is replaced; an entry that does
not validate is dropped.

*Concurrency.* Every change is a read-modify-write under an exclusive ``flock`` of
``uploads.lock`` beside the file, written to a temp file and renamed over it: two processes lose
no entries, and a kill leaves the old or the new file, never a torn one. It is not fsync'd (it
is rewritten on the event loop after every chunk, and is only a hint): a power loss may cost
the record, never a wrong byte.

*Secrets.* The location carries registry state (distribution's HMAC'd ``_state``; a signed
URL elsewhere), so the file and its lock are created 0600 in a directory created 0700, and the
location is never logged or put in an error message. No credential, token or header is stored.

*Failures* of the journal itself (an unwritable home, a full disk) never fail a copy: resume is
an optimisation. They are logged (without the location) and the copy goes on.

*What resumes.* With registries that keep upload sessions, an upload continues from the
registry's offset after any interruption. distribution 2.8 (the CNCF registry) seals the
session's offset into ``_state`` and refuses a session whose data grew past it: an upload
continues only when the interruption fell between two chunks. Ctrl-C arranges that (the chunk
in flight is given about a second to land, :data:`~ociflow.targets.blob_upload.CANCEL_GRACE`);
a SIGKILL in the middle of a chunk leaves a session the registry refuses, and the next run
starts that blob from byte 0.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ociflow.digest import Digest
from ociflow.errors import InvalidDigestError, LayoutError
from ociflow.reference import LayoutReference, Reference
from ociflow.targets import fsutil
from ociflow.targets.blob_upload import UploadSession

log = logging.getLogger(__name__)

ENV_STATE_DIR = "OCIFLOW_STATE_DIR"
JOURNAL_FILE = "uploads.json"
LOCK_FILE = "uploads.lock"
VERSION = 1
MAX_AGE = 24 * 3600.0
"""Seconds after its last update that an entry is ignored and pruned."""
MAX_ENTRIES = 512
"""Entries kept at most (the most recently updated ones)."""
MAX_JOURNAL_SIZE = 1024 * 1024
"""A larger file is not read (and is replaced on the next change)."""
_MAX_LOCATION = 8192
# A timestamp this far in the future is a clock jump or a forged entry: not trusted.
_CLOCK_SLACK = 3600.0


def default_state_dir() -> Path:
    """``$OCIFLOW_STATE_DIR``, else ``$XDG_STATE_HOME/ociflow``, else ``~/.local/state/ociflow``."""
    configured = os.environ.get(ENV_STATE_DIR)
    if configured:
        return Path(configured)
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".local" / "state"
    return base / "ociflow"


def source_id(ref: Reference) -> str:
    """How the journal names a copy's source: the reference, a layout's path made absolute (so
    that the same command run from another directory names the same source)."""
    if isinstance(ref, LayoutReference):
        return str(replace(ref, path=os.path.abspath(ref.path)))
    return str(ref)


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One open upload session, as recorded (see the module docstring for the fields)."""

    registry: str
    repository: str
    digest: Digest
    size: int
    offset: int
    location: str
    source: str
    updated: float

    @property
    def key(self) -> tuple[str, str, Digest]:
        return (self.registry, self.repository, self.digest)

    def to_json(self) -> dict[str, Any]:
        return {
            "registry": self.registry,
            "repository": self.repository,
            "digest": str(self.digest),
            "size": self.size,
            "offset": self.offset,
            "location": self.location,
            "source": self.source,
            "updated": self.updated,
        }

    @classmethod
    def from_json(cls, value: object) -> JournalEntry | None:
        """The entry ``value`` describes; None unless every field is present and sane."""
        if not isinstance(value, dict):
            return None
        texts = [value.get(k) for k in ("registry", "repository", "location", "source")]
        size, offset, updated = value.get("size"), value.get("offset"), value.get("updated")
        if not all(isinstance(t, str) and t for t in texts):
            return None
        registry, repository, location, source = (str(t) for t in texts)
        if (
            not isinstance(size, int)
            or not isinstance(offset, int)
            or not _is_count(size)
            or not _is_count(offset)
            or offset > size
            or not isinstance(updated, int | float)
            or isinstance(updated, bool)
            or not math.isfinite(updated)
            or len(location) > _MAX_LOCATION
        ):
            return None
        try:
            digest = Digest(str(value.get("digest")))
        except InvalidDigestError:
            return None
        return cls(registry, repository, digest, size, offset, location, source, float(updated))


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class UploadJournal:
    """The journal file in ``state_dir`` (default :func:`default_state_dir`).

    Nothing is read or created until a store asks; ``max_age`` and ``clock`` (Unix time) are
    there for tests.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str] | None = None,
        *,
        max_age: float = MAX_AGE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state_dir = Path(state_dir) if state_dir is not None else default_state_dir()
        self.max_age = max_age
        self._clock = clock
        self._warned = False

    @property
    def path(self) -> Path:
        return self.state_dir / JOURNAL_FILE

    def for_source(self, source: str) -> JournalStore:
        """A session store whose entries belong to ``source`` (see :func:`source_id`)."""
        return JournalStore(self, source)

    def entries(self) -> list[JournalEntry]:
        """The entries in effect (not expired), oldest first."""
        now = self._clock()
        return [e for e in self._read() if self._fresh(e, now)]

    # -- internals -----------------------------------------------------------------------

    def _fresh(self, entry: JournalEntry, now: float) -> bool:
        return now - self.max_age <= entry.updated <= now + _CLOCK_SLACK

    def _read(self) -> list[JournalEntry]:
        """Every valid entry in the file; [] when it is missing or unreadable."""
        try:
            with self._directory(create=False) as directory:
                if directory is None:
                    return []
                return self._read_in(directory)
        except (OSError, LayoutError) as exc:
            self._warn(exc)
            return []

    def _read_in(self, directory: int) -> list[JournalEntry]:
        data = fsutil.read_file(JOURNAL_FILE, directory, str(self.path), MAX_JOURNAL_SIZE)
        if data is None:
            return []
        try:
            document = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            log.warning("upload journal %s does not parse; it will be replaced", self.path)
            return []
        uploads = document.get("uploads") if isinstance(document, dict) else None
        if not isinstance(uploads, list) or document.get("version") != VERSION:
            return []
        return [e for e in map(JournalEntry.from_json, uploads) if e is not None]

    def _update(self, change: Callable[[list[JournalEntry]], list[JournalEntry]]) -> None:
        """Apply ``change`` to the entries under the lock, prune, and write the file."""
        try:
            with self._directory(create=True) as directory:
                assert directory is not None
                with fsutil.exclusive_lock(LOCK_FILE, directory, mode=0o600):
                    try:
                        entries = self._read_in(directory)
                    except LayoutError as exc:  # too large, or not a regular file
                        self._warn(exc)
                        entries = []
                    now = self._clock()
                    kept = [e for e in change(entries) if self._fresh(e, now)]
                    kept.sort(key=lambda e: e.updated)
                    kept = kept[-MAX_ENTRIES:]
                    if kept == entries:
                        return  # nothing changed (a forget of what was never recorded)
                    document = {
                        "version": VERSION,
                        "uploads": [e.to_json() for e in kept],
                    }
                    data = json.dumps(document, indent=1).encode()
                    # Not fsync'd: this runs on the event loop after every chunk, and the
                    # journal is only a hint (a lost or torn file costs a restart, never a
                    # wrong byte); the rename still makes it atomic across a kill.
                    fsutil.atomic_write(
                        JOURNAL_FILE, directory, data, mode=0o600, durable=False
                    )
        except (OSError, LayoutError) as exc:
            self._warn(exc)

    @contextlib.contextmanager
    def _directory(self, *, create: bool) -> Iterator[int | None]:
        """The state directory's descriptor (None when missing and not ``create``)."""
        if create:
            # 0700: the journal holds upload URLs with registry state (module docstring).
            os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        try:
            fd = os.open(self.state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            if create:
                raise
            yield None
            return
        try:
            yield fd
        finally:
            os.close(fd)

    def _warn(self, exc: Exception) -> None:
        # Once per journal: a broken home directory should not flood a long copy's log.
        if not self._warned:
            self._warned = True
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            log.warning("upload journal %s unusable (%s); uploads cannot be resumed after a "
                        "crash", self.path, detail)


class JournalStore:
    """A :class:`~ociflow.targets.blob_upload.SessionStore` over an :class:`UploadJournal`,
    for the uploads of one source: it finds only that source's entries."""

    def __init__(self, journal: UploadJournal, source: str) -> None:
        self.journal = journal
        self.source = source

    def find(self, repository: str, digest: Digest) -> UploadSession | None:
        """The recorded session of this blob in ``repository`` (``host/name``), if it is this
        source's and not expired."""
        key = (*_split(repository), digest)
        for entry in self.journal.entries():
            if entry.key == key and entry.source == self.source:
                return UploadSession(
                    repository, entry.digest, entry.size, entry.location, entry.offset
                )
        return None

    def record(self, session: UploadSession) -> None:
        """Record ``session`` for this source (replacing any entry of the same blob)."""
        registry, repository = _split(session.repository)
        entry = JournalEntry(
            registry,
            repository,
            session.digest,
            session.size,
            session.offset,
            session.location,
            self.source,
            self.journal._clock(),
        )
        self.journal._update(lambda entries: [*(e for e in entries if e.key != entry.key), entry])

    def forget(self, repository: str, digest: Digest) -> None:
        """Remove the entry of this blob in ``repository``, whichever source recorded it."""
        key = (*_split(repository), digest)
        self.journal._update(lambda entries: [e for e in entries if e.key != key])


def _split(repository: str) -> tuple[str, str]:
    """``host[:port]/name`` → (``host[:port]``, ``name``)."""
    registry, _, name = repository.partition("/")
    return registry, name
