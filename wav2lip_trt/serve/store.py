"""Job and avatar state in SQLite under ``--state-dir`` (WAL mode), so a restarted server knows every one.

One row per job (table ``jobs``) and per avatar (table ``avatars``, :class:`AvatarStore`). The server process is the only writer; the connection is shared by its threads
under a lock. Progress within a job (frames done) is not written here: it changes many times a
second and lives in memory for the event streams; a phase change and every status change are.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED = ("succeeded", "failed", "cancelled")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    face TEXT NOT NULL,
    audio TEXT NOT NULL,
    outfile TEXT NOT NULL,
    options TEXT NOT NULL,
    phase TEXT,
    report TEXT,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    names TEXT NOT NULL DEFAULT '{}',
    client TEXT
);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created);
CREATE TABLE IF NOT EXISTS avatars (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    face TEXT NOT NULL,
    folder TEXT NOT NULL,
    options TEXT NOT NULL,
    report TEXT,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    names TEXT NOT NULL DEFAULT '{}',
    client TEXT
);
CREATE INDEX IF NOT EXISTS avatars_created ON avatars (created);
"""


@dataclass(frozen=True)
class JobRow:
    """A job as stored: where its files are, what it was asked, how it ended."""

    id: str
    status: str  # queued | running | succeeded | failed | cancelled
    created: float  # seconds since the epoch
    started: float | None
    finished: float | None
    face: str  # the file the job reads (an upload under the state dir, or a file under --allow-path)
    audio: str
    outfile: str  # under the state dir, written by the pipeline's temporary-file-and-rename rule
    options: dict[str, Any]  # per-call options as given (JSON types)
    phase: str | None
    report: dict[str, Any] | None  # infer's --json report of a succeeded job
    error: str | None  # the CLI's message of a failed job
    attempts: int  # runs started (2 when a worker died on the first)
    names: dict[str, str]  # the client's file names, for display only (never opened)
    client: str | None  # the address the job came from (for --max-jobs-per-client)


class _Table:
    """The rows of one table, on a connection shared by the server's threads under one lock."""

    table = ""

    def __init__(self, db: sqlite3.Connection, lock: threading.Lock) -> None:
        self._db, self._lock = db, lock

    def _row(self, row: sqlite3.Row) -> Any:
        raise NotImplementedError

    def active(self, client: str) -> int:
        """Rows of ``client`` that are queued or running."""
        with self._lock:
            return self._db.execute(f"SELECT COUNT(*) FROM {self.table} WHERE client = ? AND status IN "
                                    "('queued', 'running')", (client,)).fetchone()[0]

    def update(self, row_id: str, **values: Any) -> None:
        """Set columns of one row (``report`` as a dict)."""
        if "report" in values and values["report"] is not None:
            values["report"] = json.dumps(values["report"])
        columns = ", ".join(f"{name} = ?" for name in values)
        with self._lock:
            self._db.execute(f"UPDATE {self.table} SET {columns} WHERE id = ?", (*values.values(), row_id))

    def get(self, row_id: str) -> Any:
        with self._lock:
            row = self._db.execute(f"SELECT * FROM {self.table} WHERE id = ?", (row_id,)).fetchone()
        return None if row is None else self._row(row)

    def page(self, limit: int, before: float | None = None, status: str | None = None) -> list[Any]:
        """Newest first; ``before`` (a ``created`` time) continues a previous page."""
        where, args = [], []
        if before is not None:
            where.append("created < ?")
            args.append(before)
        if status is not None:
            where.append("status = ?")
            args.append(status)
        sql = f"SELECT * FROM {self.table}" + (f" WHERE {' AND '.join(where)}" if where else "")
        with self._lock:
            rows = self._db.execute(f"{sql} ORDER BY created DESC LIMIT ?", (*args, limit)).fetchall()
        return [self._row(row) for row in rows]

    def with_status(self, *statuses: str) -> list[Any]:
        """Oldest first: the order a restart re-queues them in."""
        marks = ", ".join("?" for _ in statuses)
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM {self.table} WHERE status IN ({marks}) ORDER BY created",
                                    statuses).fetchall()
        return [self._row(row) for row in rows]

    def delete(self, row_id: str) -> None:
        with self._lock:
            self._db.execute(f"DELETE FROM {self.table} WHERE id = ?", (row_id,))


class JobStore(_Table):
    """The jobs table (and the database: it opens it); every method is safe to call from any thread."""

    table = "jobs"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        super().__init__(db, threading.Lock())

    def _row(self, row: sqlite3.Row) -> JobRow:
        return _job(row)

    def add(self, job_id: str, face: str, audio: str, outfile: str, options: dict[str, Any],
            names: dict[str, str], client: str | None = None) -> None:
        with self._lock:
            self._db.execute("INSERT INTO jobs (id, status, created, face, audio, outfile, options, names, client) "
                             "VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, ?)",
                             (job_id, time.time(), face, audio, outfile, json.dumps(options), json.dumps(names),
                              client))

    def get(self, job_id: str) -> JobRow | None:
        return super().get(job_id)

    def finished_before(self, when: float) -> list[str]:
        """Oldest first: the order the disk quota deletes them in."""
        with self._lock:
            rows = self._db.execute("SELECT id FROM jobs WHERE finished IS NOT NULL AND finished < ? ORDER BY finished",
                                    (when,)).fetchall()
        return [row[0] for row in rows]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        found = {status: count for status, count in rows}
        return {status: found.get(status, 0) for status in STATUSES}

    def close(self) -> None:
        with self._lock:
            self._db.close()


@dataclass(frozen=True)
class AvatarRow:
    """An avatar as stored: its face, its folder (``save_avatar``'s), what it was asked, how its preparation ended."""

    id: str
    status: str  # queued | running | succeeded | failed (a cancelled preparation is deleted)
    created: float
    started: float | None
    finished: float | None
    face: str  # the face file (an upload under the state dir until prepared, or a file under --allow-path)
    folder: str  # the avatar folder, STATE_DIR/avatars/ID
    options: dict[str, Any]  # avatar options as given (JSON types)
    report: dict[str, Any] | None  # frames, positions, width, height, fps, loop, detection, seconds
    error: str | None
    attempts: int
    names: dict[str, str]
    client: str | None


class AvatarStore(_Table):
    """The avatars table, on the jobs' database (same connection and lock)."""

    table = "avatars"

    def __init__(self, jobs: JobStore) -> None:
        super().__init__(jobs._db, jobs._lock)

    def _row(self, row: sqlite3.Row) -> AvatarRow:
        return _avatar(row)

    def add(self, avatar_id: str, face: str, folder: str, options: dict[str, Any], names: dict[str, str],
            client: str | None = None) -> None:
        with self._lock:
            self._db.execute("INSERT INTO avatars (id, status, created, face, folder, options, names, client) "
                             "VALUES (?, 'queued', ?, ?, ?, ?, ?, ?)",
                             (avatar_id, time.time(), face, folder, json.dumps(options), json.dumps(names), client))

    def get(self, avatar_id: str) -> AvatarRow | None:
        return super().get(avatar_id)


def _avatar(row: sqlite3.Row) -> AvatarRow:
    data = dict(row)
    for name in ("options", "names"):
        data[name] = json.loads(data[name])
    data["report"] = None if data["report"] is None else json.loads(data["report"])
    return AvatarRow(**data)


def _job(row: sqlite3.Row) -> JobRow:
    data = dict(row)
    data["options"] = json.loads(data["options"])
    data["names"] = json.loads(data["names"])
    data["report"] = None if data["report"] is None else json.loads(data["report"])
    return JobRow(**data)
