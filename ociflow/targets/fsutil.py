"""Symlink-safe, atomic file operations for on-disk targets (POSIX).

Everything here is synchronous and meant to run in a worker thread. Paths are always one name
relative to a directory file descriptor, opened without following symlinks, so a symlink placed
anywhere under a target's root can never redirect a read or a write outside it (reliability.md
L4; ggcr #2306, oras-go GHSA-8xwf-rjm4-xvhv). Publication is temp file + fsync + rename + fsync
of the directory, so a crash leaves the old or the new file, never a torn one (L1, L2).
Functions raise :class:`~ociflow.errors.LayoutError` naming ``what`` for unsafe entries; a
missing entry is :class:`FileNotFoundError`, for the caller to translate.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import stat
from collections.abc import Callable, Iterator

from ociflow.errors import LayoutError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO for reading would otherwise block until a writer appears; the
# fstat check that follows rejects it. It has no effect on regular files.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK again so that a FIFO planted at the name can never block the open.
_LOCKED_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def kind_of(mode: int) -> str:
    """A short human name for the file type in ``mode`` (for error messages)."""
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "regular file" if stat.S_ISREG(mode) else "special file"


def open_root(path: str, what: str) -> int:
    """Open the target's root directory (following a symlink: the user chose this path)."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except NotADirectoryError:
        raise LayoutError(f"{what}: not a directory") from None


def open_dir(name: str, dir_fd: int, what: str, *, create: bool = False) -> int:
    """Open the subdirectory ``name`` of ``dir_fd`` without following a symlink.

    With ``create``, make it first if it is missing (racing creators are fine).
    """
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o755, dir_fd=dir_fd)
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
        kind = kind_of(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
        raise LayoutError(f"{what} is not a directory ({kind})") from None


def lstat_regular(name: str, dir_fd: int, what: str) -> os.stat_result | None:
    """The stat of a regular file ``name``; None if missing; LayoutError for anything else."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        raise LayoutError(f"{what} is not a regular file ({kind_of(st.st_mode)})")
    return st


def open_regular(name: str, dir_fd: int, what: str) -> tuple[int, os.stat_result]:
    """Open the regular file ``name`` for reading; refuse symlinks, FIFOs, devices, directories.

    The entry is checked before it is opened (so a symlink's target, a FIFO or a device is never
    opened), and the file opened is checked again: ``O_NOFOLLOW`` refuses a symlink swapped in
    between and ``O_NONBLOCK`` keeps a FIFO from blocking; anything but a regular file is
    refused. Another regular file is accepted: that is how a concurrent writer's atomic rename
    (a new ``index.json``) looks from here.
    """
    st = lstat_regular(name, dir_fd, what)
    if st is None:
        raise FileNotFoundError(errno.ENOENT, "no such file", name)
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LayoutError(f"{what} is not a regular file (symlink)") from None
        raise
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            raise LayoutError(f"{what} changed while it was opened ({kind_of(opened.st_mode)})")
    except BaseException:
        os.close(fd)
        raise
    return fd, opened


def read_limited(fd: int, limit: int) -> bytes:
    """Read to end of file but at most ``limit + 1`` bytes (so callers can tell "too large")."""
    parts: list[bytes] = []
    total = 0
    while total <= limit:
        part = os.read(fd, min(limit + 1 - total, 1024 * 1024))
        if not part:
            break
        parts.append(part)
        total += len(part)
    return b"".join(parts)


def read_file(name: str, dir_fd: int, what: str, limit: int) -> bytes | None:
    """The content of the regular file ``name`` (None if missing), refusing more than ``limit``."""
    try:
        fd, _ = open_regular(name, dir_fd, what)
    except FileNotFoundError:
        return None
    try:
        data = read_limited(fd, limit)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise LayoutError(f"{what} is larger than the {limit}-byte limit")
    return data


def write_all(fd: int, data: bytes | memoryview) -> None:
    """``os.write`` until all of ``data`` is written (a write may be partial)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def create_exclusive(name: str, dir_fd: int, mode: int = 0o644) -> int:
    """Create a new file ``name`` for writing; fails if anything (even a symlink) is there."""
    return os.open(name, _CREATE_FLAGS, mode, dir_fd=dir_fd)


def unlink_quietly(name: str, dir_fd: int) -> None:
    """Remove ``name`` if it is still there."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dir_fd)


def atomic_write(
    name: str, dir_fd: int, data: bytes, mode: int = 0o644, *, durable: bool = True
) -> None:
    """Replace ``name`` with ``data`` atomically and durably: temp + fsync + rename + fsync dir.

    The new file gets ``mode`` (masked by the umask) from its creation on, never wider. Without
    ``durable`` the fsyncs are skipped: still atomic for every reader and across a killed
    process, but a power loss may lose the change (for files that are only hints).
    """
    temp = f".{name}.{secrets.token_hex(6)}.tmp"
    fd = create_exclusive(temp, dir_fd, mode)
    try:
        try:
            write_all(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        unlink_quietly(temp, dir_fd)
        raise
    if durable:
        os.fsync(dir_fd)


@contextlib.contextmanager
def exclusive_lock(name: str, dir_fd: int, mode: int = 0o644) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the lock file ``name`` (created with ``mode`` if missing).

    ``flock`` locks belong to the open file description, so the lock also serialises threads of
    one process, and the kernel drops it when a process dies: no stale locks after a crash.
    """
    fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def create_locked_temp(prefix: str, suffix: str, dir_fd: int) -> tuple[int, str]:
    """Create and ``flock`` a new uniquely named file ``<prefix>.<random><suffix>``.

    The lock marks the file as in use until it is closed, so :func:`sweep_abandoned` in another
    process never removes it; a file a sweeper removed before it could be locked is replaced.
    """
    for _ in range(8):
        name = f"{prefix}.{secrets.token_hex(8)}{suffix}"
        fd = create_exclusive(name, dir_fd)
        if try_lock(fd) and os.fstat(fd).st_nlink > 0:
            return fd, name
        os.close(fd)
    raise OSError(errno.EAGAIN, "could not create a locked temporary file", prefix)


def sweep_abandoned(
    suffix: str,
    dir_fd: int,
    keep: Callable[[str, os.stat_result], bool] | None = None,
) -> int:
    """Remove the files named ``*<suffix>`` that no live process holds locked; return how many.

    A process that dies mid-write releases its lock, so its temp file is removed by the next run
    (reliability.md L1), unless ``keep(name, stat)`` says it is worth keeping (a resumable
    partial file); it is asked while the file is locked. Symlinks and special files are left
    alone.
    """
    removed = 0
    for name in os.listdir(dir_fd):
        if not name.endswith(suffix):
            continue
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and try_lock(fd):
                if keep is not None and keep(name, st):
                    continue
                unlink_quietly(name, dir_fd)
                removed += 1
        finally:
            os.close(fd)
    return removed


def open_locked(name: str, dir_fd: int, what: str) -> tuple[int, int] | None:
    """Open the regular file ``name`` for reading and writing (created if missing) and take its
    ``flock`` without waiting; return the descriptor and the file's size, or None when another
    open file holds the lock.

    The file locked is the one still at ``name``: one renamed or removed by its previous holder
    between our open and our lock is let go and ``name`` opened afresh. A symlink, FIFO, device
    or directory at ``name`` is refused (LayoutError naming ``what``).
    """
    for _ in range(8):
        try:
            fd = os.open(name, _LOCKED_FLAGS, 0o644, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise LayoutError(f"{what} is not a regular file (symlink)") from None
            if exc.errno in (errno.EISDIR, errno.ENXIO):
                kind = kind_of(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
                raise LayoutError(f"{what} is not a regular file ({kind})") from None
            raise
        try:
            opened = os.fstat(fd)
            if not stat.S_ISREG(opened.st_mode):
                raise LayoutError(f"{what} is not a regular file ({kind_of(opened.st_mode)})")
            if not try_lock(fd):
                os.close(fd)
                return None
            try:
                current = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                current = None
            if current is not None and (current.st_dev, current.st_ino) == (
                opened.st_dev,
                opened.st_ino,
            ):
                return fd, os.fstat(fd).st_size
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    raise OSError(errno.EAGAIN, "could not lock a stable partial file", name)


def try_lock(fd: int) -> bool:
    """Take an exclusive ``flock`` on ``fd`` without waiting; False if someone holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
