"""What every batch worker does, whether a local process or a Ray actor: hold one session, run jobs on it.

A job that fails becomes a failed :class:`Outcome` with its one-line message; the worker, its
session and the other jobs carry on. Only the session failing to load is fatal: every job needs it.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import Wav2LipTrtError
from ..files import temporary_siblings
from ..options import InferenceOptions
from .results import Outcome

if TYPE_CHECKING:
    from ..session import Session

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerSpec:
    """What each worker loads once: the session's models, and its share of the machine's cores."""

    checkpoint_path: Path
    s3fd_checkpoint: Path | None  # None when no job needs S3FD (every job gives a box or a boxes file)
    device: str = "auto"
    backend: str = "torch"
    precision: str = "auto"
    engines_dir: Path = Path("engines")
    flavor: str = "auto"
    threads: int | None = None  # torch threads of this worker; None = torch's default (all cores)


@dataclass(frozen=True)
class Task:
    """A job as handed to a worker: complete options, and how the results name it."""

    line: int  # the job's line in the jobs file
    options: InferenceOptions
    output: str  # the outfile as the jobs file gives it
    attempt: int = 1  # 2 on the retry after a worker died running it


def open_session(spec: WorkerSpec) -> Session:
    """The worker's session; raises the loader's :class:`Wav2LipTrtError` (a missing or corrupt checkpoint, ...)."""
    import torch

    from ..session import Session

    if spec.threads is not None:
        torch.set_num_threads(spec.threads)
    return Session(spec.checkpoint_path, spec.s3fd_checkpoint, device=spec.device, backend=spec.backend,
                   precision=spec.precision, engines_dir=spec.engines_dir, flavor=spec.flavor)


def run_task(session: Session, task: Task, worker: str) -> Outcome:
    """Run one job on ``session``; never raises for the job's own problems (only interrupts pass)."""
    try:
        task.options.validate()  # before the session's own checks: it names a missing S3FD checkpoint and so on
        result = session.run(task.options)
    except Wav2LipTrtError as exc:
        return failed(task, str(exc), worker)
    except Exception as exc:  # a bug: keep the traceback in the log, keep the other jobs going
        log.exception("job on line %d failed with an internal error", task.line)
        return failed(task, f"internal error: {type(exc).__name__}: {exc} (a bug; the traceback is in the log)", worker)
    return Outcome(task.line, "ok", task.output, seconds=result.seconds, frames=result.frames, fps=result.fps,
                   frames_per_second=result.frames / result.seconds if result.seconds > 0 else None, worker=worker,
                   attempts=task.attempt)


def failed(task: Task, error: str, worker: str | None) -> Outcome:
    return Outcome(task.line, "failed", task.output, error=error, worker=worker, attempts=task.attempt)


def this_worker(prefix: str) -> str:
    """A name for the results: ``prefix:host:pid``."""
    return f"{prefix}:{socket.gethostname()}:{os.getpid()}"


def temporaries(task: Task) -> set[Path]:
    """The temporary files of ``task``'s output that exist now (the exact ``.partial`` names, nothing else)."""
    return temporary_siblings(Path(task.options.outfile))


def remove_temporaries(task: Task, before: set[Path]) -> list[Path]:
    """Remove the temporary files of ``task``'s output made since ``before`` (its :func:`temporaries` when handed out).

    For a worker that died running it: a killed process cannot remove its own, and its ffmpeg
    finishes the file it was writing. Files that existed before the job started are not its own and
    stay. Returns what was removed.
    """
    removed = []
    for path in temporaries(task) - before:
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("cannot remove %s, left by a dead worker: %s", path, exc.strerror or exc)
            continue
        removed.append(path)
    return removed
