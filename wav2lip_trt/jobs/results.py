"""What a batch leaves behind: a results line per job, and the marks that tell a finished job on the next run.

Results (``--results PATH``): JSONL, one line per job, written the moment the job finishes, so a
killed batch still says what it finished. Each run writes the file anew, finished jobs of an
earlier run appearing as ``"status": "skipped"``.

Resuming. A job is done when its output exists, is newer than its inputs (face, audio, boxes file,
checkpoints) and was made with the same options. The pipeline publishes an output only when it is
complete (temporary file + rename), so an output that exists is whole. For the options, the batch
writes a small hidden mark beside the output (``.NAME.wav2lip-trt-job.json``: a fingerprint of
every option that shapes the video) *before* the job starts; the job's output, finished later,
is then newer than its mark. An output older than its mark is left over from an earlier run (the
mark belongs to a run that died or failed before publishing), and an output without a mark, or
with a mark of other options, was made some other way: either way the job runs again. Because the
mark is written first and the output is renamed into place last, there is no moment at which a
kill leaves a finished job looking unfinished or the reverse. Comparing modification times of two
files in the same folder stays right on shared storage, where the machines' clocks may differ.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from ..errors import InputError
from ..files import atomic_write_text, name_max, read_regular_file
from ..json_input import JsonInputError, load_json_text
from ..options import InferenceOptions

MARK_TAG = ".wav2lip-trt-job.json"
UNSHAPING = ("cache_dir", "no_cache", "frame_memory")  # change where or how fast, never what is written
STATUSES = ("ok", "failed", "skipped")


@dataclass(frozen=True)
class Outcome:
    """One job's line in the results file."""

    job: int  # the job's line in the jobs file
    status: str  # ok | failed | skipped (done by an earlier run)
    output: str  # the outfile as the jobs file gives it
    error: str | None = None  # the one-line message of a failed job
    seconds: float | None = None  # wall time of the job in its worker, models already loaded
    frames: int | None = None
    fps: float | None = None  # the output video's frame rate
    frames_per_second: float | None = None  # frames / seconds
    worker: str | None = None  # which worker ran it (local-N, or ray:<node>:<pid>)
    attempts: int = 1  # 2 when its first worker died and another ran it

    def to_json(self) -> dict[str, Any]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in dataclasses.asdict(self).items()}


class ResultsFile:
    """The results JSONL, one line appended and flushed per finished job."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._file: Any = None

    def __enter__(self) -> "ResultsFile":
        """Open (truncate) the file; a FIFO no one reads is refused at once, where ``open`` would wait forever.

        A pipe with a reader (``--results >(jq .)``) and a device such as ``/dev/null`` are written as usual.
        """
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            why = "it is a FIFO with no reader" if exc.errno == errno.ENXIO else exc.strerror or exc
            raise InputError(f"--results {self.path}: cannot write: {why}") from None
        os.set_blocking(fd, True)  # a reader that is slow to read slows the batch, it does not fail it
        self._file = open(fd, "w", encoding="utf-8")
        return self

    def write(self, outcome: Outcome) -> None:
        self._file.write(json.dumps(outcome.to_json()) + "\n")
        self._file.flush()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._file is not None:
            self._file.close()


def read_results(path: Path) -> list[dict[str, Any]]:
    """The lines of a results file; a last line cut short by a kill is left out."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rows.append(load_json_text(line))
        except JsonInputError:
            continue
    return rows


def fingerprint(options: InferenceOptions) -> str:
    """sha256 of every option that shapes the output (all but cache and memory settings), paths absolute."""
    shaping = {k: _plain(v) for k, v in dataclasses.asdict(options).items() if k not in UNSHAPING}
    if not options.needs_detector:
        shaping.pop("s3fd_checkpoint")  # no detector runs: another S3FD changes nothing
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()


def mark_path(outfile: Path) -> Path:
    """The hidden mark beside ``outfile`` (a hash of the name when the name would be too long)."""
    outfile = Path(outfile)
    name = f".{outfile.name}{MARK_TAG}"
    parent = outfile.parent
    if len(os.fsencode(name)) > name_max(parent if parent.exists() else Path(".")):
        name = f".{hashlib.sha256(os.fsencode(outfile.name)).hexdigest()[:32]}{MARK_TAG}"
    return parent / name


def mark_started(options: InferenceOptions, line: int) -> None:
    """Write the job's mark before it runs (see the module's docstring); :class:`InputError` if it cannot."""
    mark = mark_path(options.outfile)
    record = {"job": line, "fingerprint": fingerprint(options), "face": str(options.face), "audio": str(options.audio)}
    try:
        mark.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(mark, json.dumps(record) + "\n")
    except OSError as exc:
        raise InputError(f"outfile {options.outfile}: cannot write in {mark.parent}: {exc.strerror or exc}") from None


def is_done(options: InferenceOptions) -> bool:
    """The job's output exists, is newer than its inputs and its mark, and the mark holds its options."""
    try:
        made = os.stat(options.outfile)
        mark = mark_path(options.outfile)
        marked = os.stat(mark)
        record = load_json_text(read_regular_file(mark).decode("utf-8"))  # a FIFO there must not hang the batch
    except (OSError, ValueError):  # NotRegularFile is an OSError, UnicodeDecodeError a ValueError
        return False
    if not isinstance(record, dict) or record.get("fingerprint") != fingerprint(options):
        return False
    if made.st_size == 0 or made.st_mtime_ns < marked.st_mtime_ns:
        return False
    return all(made.st_mtime_ns >= newest for newest in map(_newest_mtime, _inputs(options)))


def _inputs(options: InferenceOptions) -> Iterable[Path]:
    yield options.face
    yield options.audio
    yield options.checkpoint_path
    if options.needs_detector:
        yield options.s3fd_checkpoint
    if options.boxes is not None:
        yield options.boxes


def _newest_mtime(path: Path) -> int:
    """The file's modification time; for a folder of frames the newest of the folder and its files."""
    try:
        info = os.stat(path)
    except OSError:
        return 1 << 62  # a missing input: never done (the job will say what is missing)
    newest = info.st_mtime_ns
    if os.path.isdir(path):
        with os.scandir(path) as entries:
            for entry in entries:
                try:
                    newest = max(newest, entry.stat().st_mtime_ns)
                except OSError:
                    continue
    return newest


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(Path(value).absolute())
    if isinstance(value, tuple):
        return list(value)
    return value
