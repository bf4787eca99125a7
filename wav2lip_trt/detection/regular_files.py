"""Locking files in a folder we own without being led out of it: only regular files, never through a link.

A cache folder is shared and long-lived, so anything may appear in it: a symbolic link (opening it
would read, or with ``O_CREAT`` create, a file at its target, wherever that is), a FIFO (opening it
for reading blocks until a writer comes, forever), a folder, a socket or a device. Every open
here is :func:`wav2lip_trt.files.open_regular` (``O_NOFOLLOW | O_NONBLOCK``, then ``fstat``-checked);
reading (:func:`~wav2lip_trt.files.read_regular_file`) lives there too, for any package that reads
such a folder.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable
from pathlib import Path

from ..files import NotRegularFile, open_regular, read_regular_file

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ["NotRegularFile", "lock_file", "open_regular", "read_regular_file"]


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
