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


class JobStore:
    """The jobs table; every method is safe to call from any thread."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def add(self, job_id: str, face: str, audio: str, outfile: str, options: dict[str, Any],
            names: dict[str, str], client: str | None = None) -> None:
        with self._lock:
            self._db.execute("INSERT INTO jobs (id, status, created, face, audio, outfile, options, names, client) "
                             "VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, ?)",
                             (job_id, time.time(), face, audio, outfile, json.dumps(options), json.dumps(names),
                              client))

    def active(self, client: str) -> int:
        """Jobs of ``client`` that are queued or running."""
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM jobs WHERE client = ? AND status IN ('queued', 'running')",
                                    (client,)).fetchone()[0]

    def update(self, job_id: str, **values: Any) -> None:
        """Set columns of one job (``report`` as a dict)."""
        if "report" in values and values["report"] is not None:
            values["report"] = json.dumps(values["report"])
        columns = ", ".join(f"{name} = ?" for name in values)
        with self._lock:
            self._db.execute(f"UPDATE jobs SET {columns} WHERE id = ?", (*values.values(), job_id))

    def get(self, job_id: str) -> JobRow | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _job(row)

    def page(self, limit: int, before: float | None = None, status: str | None = None) -> list[JobRow]:
        """Newest first; ``before`` (a ``created`` time) continues a previous page."""
        where, args = [], []
        if before is not None:
            where.append("created < ?")
            args.append(before)
        if status is not None:
            where.append("status = ?")
            args.append(status)
        sql = "SELECT * FROM jobs" + (f" WHERE {' AND '.join(where)}" if where else "")
        with self._lock:
            rows = self._db.execute(f"{sql} ORDER BY created DESC LIMIT ?", (*args, limit)).fetchall()
        return [_job(row) for row in rows]

    def with_status(self, *statuses: str) -> list[JobRow]:
        """Oldest first: the order a restart re-queues them in."""
        marks = ", ".join("?" for _ in statuses)
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY created",
                                    statuses).fetchall()
        return [_job(row) for row in rows]

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

    def delete(self, job_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

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


class AvatarStore:
    """The avatars table, on the jobs' database (same connection and lock)."""

    def __init__(self, jobs: JobStore) -> None:
        self._db, self._lock = jobs._db, jobs._lock

    def add(self, avatar_id: str, face: str, folder: str, options: dict[str, Any], names: dict[str, str],
            client: str | None = None) -> None:
        with self._lock:
            self._db.execute("INSERT INTO avatars (id, status, created, face, folder, options, names, client) "
                             "VALUES (?, 'queued', ?, ?, ?, ?, ?, ?)",
                             (avatar_id, time.time(), face, folder, json.dumps(options), json.dumps(names), client))

    def update(self, avatar_id: str, **values: Any) -> None:
        if "report" in values and values["report"] is not None:
            values["report"] = json.dumps(values["report"])
        columns = ", ".join(f"{name} = ?" for name in values)
        with self._lock:
            self._db.execute(f"UPDATE avatars SET {columns} WHERE id = ?", (*values.values(), avatar_id))

    def get(self, avatar_id: str) -> AvatarRow | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM avatars WHERE id = ?", (avatar_id,)).fetchone()
        return None if row is None else _avatar(row)

    def page(self, limit: int, before: float | None = None) -> list[AvatarRow]:
        """Newest first; ``before`` (a ``created`` time) continues a previous page."""
        where, args = ("WHERE created < ?", (before,)) if before is not None else ("", ())
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM avatars {where} ORDER BY created DESC LIMIT ?",
                                    (*args, limit)).fetchall()
        return [_avatar(row) for row in rows]

    def with_status(self, *statuses: str) -> list[AvatarRow]:
        marks = ", ".join("?" for _ in statuses)
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM avatars WHERE status IN ({marks}) ORDER BY created",
                                    statuses).fetchall()
        return [_avatar(row) for row in rows]

    def active(self, client: str) -> int:
        """Avatars of ``client`` being prepared or waiting to be."""
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM avatars WHERE client = ? AND status IN ('queued', 'running')",
                                    (client,)).fetchone()[0]

    def delete(self, avatar_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM avatars WHERE id = ?", (avatar_id,))


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
