"""Opening files in a folder we own without being led out of it: only regular files, never through a link.

A cache folder is shared and long-lived, so anything may appear in it: a symbolic link (opening it
would read, or with ``O_CREAT`` create, a file at its target, wherever that is), a FIFO (opening it
for reading blocks until a writer comes, forever), a folder, a socket or a device. Every open
here is ``O_NOFOLLOW | O_NONBLOCK`` and then ``fstat``-checked, and anything but a regular file is
:class:`NotRegularFile`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

_NO_FOLLOW = os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
_LINK_ERRNOS = {errno.ELOOP, errno.EMLINK}  # what open(O_NOFOLLOW) says for a symbolic link (Linux, BSD)
_SPECIAL_ERRNOS = {errno.EISDIR, errno.ENXIO, errno.ENODEV, errno.EOPNOTSUPP}  # a folder, socket, device


class NotRegularFile(OSError):
    """The path is a symbolic link, a folder, a FIFO, a device or a socket; ``strerror`` says which."""


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def open_regular(path: Path, flags: int, mode: int = 0o666) -> tuple[int, os.stat_result]:
    """``os.open(path, flags)`` that neither follows a symbolic link nor blocks; (fd, fstat) of a regular file."""
    try:
        fd = os.open(path, flags | _NO_FOLLOW, mode)
    except OSError as exc:
        if exc.errno in _LINK_ERRNOS:
            raise NotRegularFile(exc.errno, "it is a symbolic link") from None
        if exc.errno in _SPECIAL_ERRNOS:
            raise NotRegularFile(exc.errno, "it is not a regular file") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise NotRegularFile(errno.EINVAL, f"it is {_kind(st.st_mode)}, not a regular file")
    return fd, st


def read_regular_file(path: Path) -> bytes:
    """The bytes of ``path`` if it is a regular file (:class:`NotRegularFile` otherwise)."""
    fd, _ = open_regular(path, os.O_RDONLY)
    with open(fd, "rb") as f:
        return f.read()


def lock_file(path: Path, on_replaced: Callable[[Path, str], None] | None = None) -> int:
    """An fd holding an exclusive ``flock`` on ``path``, a regular file (created if missing).

    Anything else at ``path`` (a link, whose target ``O_CREAT`` would create; a FIFO) is removed and
    a lock file created instead, after ``on_replaced(path, why)``: call it only for a path inside a
    folder we own. After locking, ``path`` must still name the locked file (another process may have
    replaced it meanwhile), else the lock is taken again.
    """
    if fcntl is None:  # pragma: no cover
        raise OSError(errno.ENOSYS, "no fcntl.flock on this system")
    for _ in range(10):
        try:
            fd, locked = open_regular(path, os.O_RDWR | os.O_CREAT)
        except NotRegularFile as exc:
            if on_replaced is not None:
                on_replaced(path, exc.strerror)
            with contextlib.suppress(FileNotFoundError):  # a folder stays (IsADirectoryError): the caller fails
                os.unlink(path)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            now = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:  # removed while we waited: lock again
            now = None
        except BaseException:
            os.close(fd)
            raise
        if now is not None and (now.st_dev, now.st_ino) == (locked.st_dev, locked.st_ino):
            return fd
        os.close(fd)
    raise OSError(errno.EAGAIN, f"lock file {path} keeps being replaced")
