"""The disk quota of ``--state-dir`` (``--max-disk-gb``): every job's uploads and output, kept as a running sum.

Usage is the sum of the job folders' sizes (``jobs/<id>/``: uploads, the output being written, the
result). The folders are measured once when the server starts; after that only one job's folder is
measured again, and only when it changes: when the job is admitted, while it runs (each tick of the
job watch, so a growing output counts), and when it ends; a deleted job's share is dropped. No
request walks the tree.

The rule, in the order it is applied to new work (a request with a body, a new job):

1. The state folder's filesystem must keep ``MIN_FREE_BYTES`` free: below that, 507.
2. A request larger than the whole quota can never fit: 413.
3. If it does not fit beside what is stored (and reserved by requests being admitted), the oldest
   finished jobs (succeeded, failed or cancelled) that ended at least ``--quota-grace-minutes`` ago
   are deleted, oldest first, until it fits: their clients had that long to fetch the result, which
   ``--keep-hours`` would delete anyway.
4. If it still does not fit: 507 Insufficient Storage, one line. Not a 429: the client did nothing
   too often, and waiting alone may not help (the server's storage is full until jobs expire or are
   deleted); not a 413: the request itself is within the limits.

A running job whose output takes usage past the quota is cancelled by the job watch (its partial
output removed, its uploads kept as for any failed job) and fails saying so. The watch ticks every
half second, so usage can pass the quota by what a job writes in that time: a soft limit.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from .responses import error_response
from .uploads import UploadError

GB = 10**9
MIN_FREE_BYTES = GB // 2  # new work is refused while the state folder's filesystem has less free


class StorageFull(UploadError):
    """507 (or 413 for a request that alone exceeds the quota): new work that the server has no room for."""

    def __init__(self, message: str, status: int = 507) -> None:
        super().__init__(message, status)


class DiskQuota:
    """Bytes under ``root`` (one folder per job) against ``limit`` (0 = no limit); safe from any thread."""

    def __init__(self, root: Path, limit: int, *, grace_seconds: float,
                 finished_before: Callable[[float], Iterable[str]], delete: Callable[[str], None],
                 floor: int = MIN_FREE_BYTES) -> None:
        self.root, self.limit, self.grace_seconds, self.floor = Path(root), limit, grace_seconds, floor
        self._finished_before, self._delete = finished_before, delete
        self._roots: dict[str, tuple[Path, ...]] = {}  # key prefix -> folders whose entries share one key each
        self._sizes: dict[str, int] = {}
        self._used = 0
        self._reserved = 0
        self._lock = threading.RLock()  # a deletion while making room calls forget()

    @property
    def used(self) -> int:
        return self._used

    def add_roots(self, prefix: str, *folders: Path) -> None:
        """Count ``folders`` too: entry NAME of any of them is part of key ``prefix + NAME`` (an avatar's folder
        and its upload are one key). Such keys are never evicted: only finished jobs are (see the module)."""
        self._roots[prefix] = tuple(Path(folder) for folder in folders)

    def scan(self) -> None:
        """Measure every job folder (and every folder under the added roots) once (at start)."""
        sizes: dict[str, int] = {}
        for prefix, folders in (("", (self.root,)), *self._roots.items()):
            for folder in folders:
                try:
                    with os.scandir(folder) as entries:
                        for entry in entries:
                            if entry.is_dir(follow_symlinks=False) and not entry.name.startswith("."):
                                key = prefix + entry.name
                                sizes[key] = sizes.get(key, 0) + folder_bytes(Path(entry.path))
                except FileNotFoundError:
                    pass
        with self._lock:
            self._sizes, self._used = sizes, sum(sizes.values())

    def account(self, job_id: str, *folders: Path) -> int:
        """Measure one job's folder again (it was created, grew or ended), or the ``folders`` of another key; its
        size now."""
        size = sum(folder_bytes(folder) for folder in (folders or (self.root / job_id,)))
        with self._lock:
            self._used += size - self._sizes.get(job_id, 0)
            if size:
                self._sizes[job_id] = size
            else:
                self._sizes.pop(job_id, None)
        return size

    def forget(self, job_id: str) -> None:
        """A job's folder was deleted."""
        with self._lock:
            self._used -= self._sizes.pop(job_id, 0)

    def size(self, job_id: str) -> int:
        with self._lock:
            return self._sizes.get(job_id, 0)

    def excess(self) -> int:
        """Bytes stored beyond the quota (0 when within it, or without a quota)."""
        with self._lock:
            return max(0, self._used - self.limit) if self.limit else 0

    def make_room(self, needed: int = 0) -> bool:
        """Delete the oldest finished jobs past the grace until ``needed`` more bytes fit; whether they do."""
        with self._lock:
            if self._fits(needed):
                return True
            for job_id in self._finished_before(time.time() - self.grace_seconds):
                self._delete(job_id)
                self.forget(job_id)
                if self._fits(needed):
                    return True
            return False

    def admit(self, nbytes: int) -> None:
        """:class:`StorageFull` unless ``nbytes`` more fit (after making room, see the module's rule)."""
        free = shutil.disk_usage(self.root).free
        if free - nbytes < self.floor:
            raise StorageFull(f"the server's disk is nearly full ({_size(free)} free; it keeps {_size(self.floor)} "
                              "free); try again later")
        if not self.limit:
            return
        if nbytes > self.limit:
            raise StorageFull(f"the request ({_size(nbytes)}) is larger than the server's whole disk quota "
                              f"({_size(self.limit)}, --max-disk-gb)", 413)
        if not self.make_room(nbytes):
            with self._lock:
                used = self._used + self._reserved
            raise StorageFull(f"the server's storage is full: {_size(used)} of its {_size(self.limit)} quota "
                              "(--max-disk-gb) is in use; try again when finished jobs expire, or delete finished "
                              "jobs you no longer need (DELETE /v1/jobs/ID)")

    @contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        """Admit ``nbytes`` and hold them against the quota until the block ends (by then the job is accounted)."""
        with self._lock:
            self.admit(nbytes)
            self._reserved += nbytes
        try:
            yield
        finally:
            with self._lock:
                self._reserved -= nbytes

    def _fits(self, needed: int) -> bool:
        return not self.limit or self._used + self._reserved + needed <= self.limit


class StorageGate:
    """ASGI: a request that declares a body is refused before it is read when the quota cannot take it."""

    def __init__(self, app: ASGIApp, quota: DiskQuota) -> None:
        self.app, self.quota = app, quota

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        length = declared_length(scope) if scope["type"] == "http" else None
        if length is not None:
            try:
                await asyncio.to_thread(self.quota.admit, length)
            except StorageFull as exc:
                await error_response(exc.status, str(exc))(scope, receive, send)
                return
        await self.app(scope, receive, send)


def declared_length(scope: Scope) -> int | None:
    """The request's Content-Length; 0 for a chunked body (length unknown), None when it has no body."""
    length = None
    for name, value in scope.get("headers", ()):
        if name == b"content-length" and value.isdigit():
            length = int(value) or None
        elif name == b"transfer-encoding":
            return 0
    return length


def _size(nbytes: int) -> str:
    """``1.5 GB``, ``412 MB``, ``0.0123 MB``: the unit of the quota option, MB under a tenth of a GB."""
    return f"{nbytes / GB:.3g} GB" if nbytes >= GB // 10 else f"{nbytes / 10**6:.3g} MB"


def folder_bytes(folder: Path) -> int:
    """Apparent size of the files under ``folder`` (0 when it is gone)."""
    total = 0
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        total += folder_bytes(Path(entry.path))
                    elif entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
                except FileNotFoundError:
                    continue  # removed while measured (a temporary output renamed)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    return total
