"""``run_batch``: every job of a jobs file, on local worker processes or on Ray, resumable.

The steps, in order: check the options and the whole jobs file (a malformed file runs nothing);
find the jobs an earlier run finished (:func:`wav2lip_trt.jobs.results.is_done`); with ``--ray``,
connect to the cluster; skip the finished jobs and mark the others as started; hand them to the
workers; write a results line as each one finishes. A failed job is a
line in the results, never the end of the batch; only a problem every job shares (a missing
checkpoint, a session that cannot load) stops it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError, Wav2LipTrtError
from ..files import check_output_file, named
from ..options import InferenceOptions, check_model_choices
from .results import Outcome, ResultsFile, is_done, mark_started
from .spec import JobSpec, absolute, check_paths, read_jobs
from .worker import Task, WorkerSpec, failed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchOptions:
    """The options every job shares (the command line of ``batch``); each job's own come from the jobs file."""

    jobs_file: Path  # JSONL or CSV, see wav2lip_trt.jobs.spec
    checkpoint_path: Path  # Wav2Lip generator checkpoint
    s3fd_checkpoint: Path = Path("checkpoints/s3fd.pth")  # loaded only if some job needs detection
    device: str = "auto"
    backend: str = "torch"
    precision: str = "auto"
    engines_dir: Path = Path("engines")
    flavor: str = "auto"
    cache_dir: Path | None = None  # detection cache, shared by every worker (safe across processes)
    no_cache: bool = False
    workers: int | None = None  # None = one per GPU, or a few that split the CPU cores
    threads_per_worker: int | None = None  # torch intra-op threads per worker; None = the cores split between workers
    results: Path | None = None  # results JSONL; None = JOBS_STEM.results.jsonl beside the jobs file
    ray: str | None = None  # None = local processes; "local" (a Ray instance started here), "auto", "ray://HOST:PORT"
    ray_timeout: float = 30.0  # seconds to wait for the cluster at --ray ADDRESS to answer
    force: bool = False  # run every job, even those an earlier run finished

    @property
    def results_path(self) -> Path:
        if self.results is not None:
            return Path(self.results)
        return Path(self.jobs_file).with_name(f"{Path(self.jobs_file).stem}.results.jsonl")

    def shared(self) -> dict[str, Any]:
        """The :class:`InferenceOptions` fields every job gets from here (paths absolute, the same for every worker)."""
        return {"checkpoint_path": absolute(self.checkpoint_path, "--checkpoint_path"),
                "s3fd_checkpoint": absolute(self.s3fd_checkpoint, "--s3fd-checkpoint"),
                "device": self.device, "backend": self.backend, "precision": self.precision,
                "engines_dir": absolute(self.engines_dir, "--engines-dir"), "flavor": self.flavor,
                "cache_dir": None if self.cache_dir is None else absolute(self.cache_dir, "--cache-dir"),
                "no_cache": self.no_cache}

    def validate(self) -> None:
        check_model_choices(self.checkpoint_path, self.device, self.backend, self.precision)
        if self.workers is not None and self.workers < 1:
            raise InputError(f"--workers must be at least 1, got {self.workers}")
        if self.threads_per_worker is not None and self.threads_per_worker < 1:
            raise InputError(f"--threads-per-worker must be at least 1, got {self.threads_per_worker}")
        if not (math.isfinite(self.ray_timeout) and self.ray_timeout > 0):
            raise InputError(f"--ray-timeout must be a positive number of seconds, got {self.ray_timeout}")


@dataclass
class BatchReport:
    outcomes: list[Outcome]  # one per job, in the order of the jobs file
    seconds: float  # wall time of the whole batch, worker start-up included
    results: Path
    workers: int  # workers started (0 when every job was already done)
    ran: int = field(init=False)

    def __post_init__(self) -> None:
        self.ran = sum(o.status != "skipped" for o in self.outcomes)

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def succeeded(self) -> bool:
        """Every job is done: run now, or by an earlier run."""
        return all(o.status in ("ok", "skipped") for o in self.outcomes)


def run_batch(options: BatchOptions, *, on_phase: Callable[[str], None] | None = None,
              on_start: Callable[[int], None] | None = None, on_outcome: Callable[[Outcome], None] | None = None,
              log_level: int = logging.WARNING) -> BatchReport:
    """Run every job of ``options.jobs_file``; a results line per job, as each finishes.

    ``on_phase(label)`` says what the batch is doing, ``on_start(n)`` gives the number of jobs that
    will run, and ``on_outcome(outcome)`` reports each finished (or skipped) job. ``log_level`` is
    the workers' logging level.
    """
    started = time.perf_counter()
    phase = on_phase or (lambda label: None)
    options.validate()
    shared = options.shared()
    jobs = read_jobs(options.jobs_file)
    planned = [(job, job.inference_options(shared)) for job in jobs]
    _check_paths(options, planned)
    outcomes: dict[int, Outcome] = {}
    done = {job.line for job, opts in planned if not options.force and is_done(opts)}
    left = [(job, opts) for job, opts in planned if job.line not in done]
    with _ray_connected(options, bool(left), phase, log_level), ResultsFile(options.results_path) as results:

        def report(outcome: Outcome) -> None:
            outcomes[outcome.job] = outcome
            results.write(outcome)
            if on_outcome is not None:
                on_outcome(outcome)

        for job, _ in planned:
            if job.line in done:
                report(Outcome(job.line, "skipped", str(job.outfile)))
        if on_start is not None:
            on_start(len(left))
        todo = [task for task in (_task(job, opts, report) for job, opts in left) if task is not None]
        workers = 0
        if todo:
            workers = _run(todo, options, shared, report, phase, log_level)
    seconds = time.perf_counter() - started
    return BatchReport([outcomes[job.line] for job in jobs], seconds, options.results_path, workers)


@contextmanager
def _ray_connected(options: BatchOptions, needed: bool, phase: Callable[[str], None], log_level: int) -> Iterator[None]:
    """With ``--ray``: connected before anything is written (an unreachable cluster leaves no results, no marks)."""
    if options.ray is None or not needed:
        yield
        return
    from .ray_runner import LOCAL, connect, import_ray

    ray = import_ray(options.ray, options.ray_timeout)
    phase("starting Ray" if options.ray == LOCAL else f"connecting to Ray at {options.ray}")
    started = connect(ray, options.ray, log_level, options.ray_timeout)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def _task(job: JobSpec, opts: InferenceOptions, report: Callable[[Outcome], None]) -> Task | None:
    """The job as a task, checked and its mark written (see results.py); a job that fails either fails here.

    Checking here (files exist, options valid, outputs writable) spares starting a worker for a job
    that cannot run; the worker checks again, for what changed in between.
    """
    task = Task(job.line, opts, str(job.outfile))
    try:
        opts.validate()
        mark_started(opts, job.line)
    except Wav2LipTrtError as exc:
        report(failed(task, str(exc), None))
        return None
    return task


def _run(tasks: list[Task], options: BatchOptions, shared: dict[str, Any], report: Callable[[Outcome], None],
         phase: Callable[[str], None], log_level: int) -> int:
    """Start the workers (local or Ray) and run ``tasks``; returns how many workers ran them."""
    needs_s3fd = any(task.options.needs_detector for task in tasks)
    s3fd = shared["s3fd_checkpoint"] if needs_s3fd and shared["s3fd_checkpoint"].is_file() else None
    spec = WorkerSpec(shared["checkpoint_path"], s3fd, options.device, options.backend, options.precision,
                      shared["engines_dir"], options.flavor, threads=options.threads_per_worker)

    def ready(count: int) -> None:
        phase(f"lip-syncing ({count} worker{'s' if count > 1 else ''} ready)")

    if options.ray is not None:
        from .ray_runner import import_ray, run_on_ray

        import_ray()  # a missing Ray is the first thing said, before any model loads
        phase("starting Ray actors")
        workers = None if options.workers is None else min(options.workers, len(tasks))
        return run_on_ray(tasks, spec, address=options.ray, workers=workers, on_outcome=report, on_ready=ready,
                          log_level=log_level, timeout=options.ray_timeout)

    from dataclasses import replace

    from .local import LocalPool, cpu_cores, default_workers, gpu_count

    count = min(options.workers or default_workers(options.device), len(tasks))
    gpus = gpu_count(options.device) if options.device != "cpu" else 0
    spec = replace(spec, threads=options.threads_per_worker or max(1, cpu_cores() // count))
    phase(f"loading models in {count} worker{'s' if count > 1 else ''}")
    LocalPool(spec, count, gpus=range(gpus), log_level=log_level).run(tasks, report, on_ready=ready)
    return count


def _check_paths(options: BatchOptions, planned: list[tuple[JobSpec, InferenceOptions]]) -> None:
    """No output of the batch (a job's, the results file) is an input or another output; --results is writable."""
    check_paths(options.jobs_file, planned,
                named({"--checkpoint_path": options.checkpoint_path, "--s3fd-checkpoint": options.s3fd_checkpoint}),
                named({"--results": options.results_path}))
    check_output_file(options.results_path, "--results")
