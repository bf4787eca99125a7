"""``wav2lip-trt batch JOBS``: many lip-syncs from a jobs file, on local workers or a Ray cluster."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click

from ..cli_errors import setup_logging, user_errors
from ..cli_options import PROGRESS_OPTION, RUNNER_OPTIONS, with_options
from ..errors import InputError

log = logging.getLogger("wav2lip_trt.jobs")

RAY_LOCAL = "local"
INTERRUPTED = "finished outputs are kept; run the same command again to resume"


def check_ray_address(address: str | None) -> None:
    """``--ray`` takes an optional value, so ``--ray jobs.jsonl`` would take the jobs file as the address."""
    if address is None or address in (RAY_LOCAL, "auto") or ":" in address:
        return
    raise InputError(f"--ray {address}: not a Ray address (auto, ray://HOST:PORT or HOST:PORT); to start a local "
                     "Ray instance write --ray after JOBS, or --ray=local")


@click.command("batch")
@click.argument("jobs_file", metavar="JOBS", type=click.Path(path_type=Path))
@click.option("--checkpoint_path", "--checkpoint-path", "checkpoint_path", required=True,
              type=click.Path(path_type=Path),
              help="Wav2Lip checkpoint (wav2lip.pth or wav2lip_gan.pth), loaded once per worker.")
@click.option("--s3fd-checkpoint", "--s3fd_checkpoint", "s3fd_checkpoint", type=click.Path(path_type=Path),
              default=Path("checkpoints/s3fd.pth"), show_default=True,
              help="S3FD face detector weights (loaded only when some job detects faces).")
@with_options(*RUNNER_OPTIONS)
@click.option("--cache-dir", "cache_dir", type=click.Path(path_type=Path),
              help="Detection cache folder, shared by all workers "
                   "[$XDG_CACHE_HOME/wav2lip-trt, else ~/.cache/wav2lip-trt].")
@click.option("--no-cache", "no_cache", is_flag=True, help="Neither read nor write the detection cache.")
@click.option("--workers", type=int, metavar="N",
              help="Worker processes (Ray actors with --ray), each holding one session. "
                   "[one per GPU; on a CPU one per core, at most 4]")
@click.option("--threads-per-worker", "threads_per_worker", type=int, metavar="N",
              help="Torch intra-op threads in each worker; CPU outputs are bit-identical to infer's when this equals "
                   "infer's thread count. [the CPU cores split between the workers]")
@click.option("--results", type=click.Path(path_type=Path), metavar="PATH",
              help="Results JSONL, a line per job as it finishes [JOBS_STEM.results.jsonl beside JOBS].")
@click.option("--ray", "ray", is_flag=False, flag_value=RAY_LOCAL, metavar="[ADDRESS]",
              help="Run the jobs on Ray actors: a cluster's ADDRESS (auto, ray://HOST:PORT), or with no address a "
                   "Ray instance started on this machine. Files must be on storage every node sees at the same path. "
                   "Needs pip install 'wav2lip-trt[ray]'.")
@click.option("--ray-timeout", "ray_timeout", type=float, default=30.0, show_default=True, metavar="SECONDS",
              help="With --ray ADDRESS: give up when the cluster does not answer within this time.")
@click.option("--force", is_flag=True, help="Run every job, even those an earlier run finished.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
@PROGRESS_OPTION
@user_errors(interrupted=INTERRUPTED)
def batch_command(quiet: bool, progress: str, **kwargs: Any) -> None:
    """Lip-sync every job of a JSONL or CSV jobs file (face, audio, outfile, per-job infer options).

    Re-running the same command skips the jobs whose output is complete and newer than its inputs
    and options; the exit code is 0 only when every job succeeded.
    """
    from ..progress import Progress
    from .batch import BatchOptions, run_batch

    setup_logging(quiet, progress)
    check_ray_address(kwargs["ray"])
    options = BatchOptions(**kwargs)
    if options.ray is not None:
        from .ray_runner import import_ray

        import_ray(options.ray, options.ray_timeout)  # before the jobs file is read: what this machine is missing
    done = 0

    with Progress("reading jobs", unit="job", enabled=not quiet) as shown:

        def finished(outcome: Any) -> None:
            nonlocal done
            if outcome.status == "failed":
                log.error("Error: line %d (%s): %s", outcome.job, outcome.output, outcome.error)
            if outcome.status != "skipped":
                done += 1
                shown.update(done)

        report = run_batch(options, on_phase=shown.relabel, on_start=shown.start, on_outcome=finished,
                           log_level=logging.ERROR if quiet else logging.WARNING)
    if not quiet:
        seconds = report.seconds
        rate = f" ({report.ran / seconds:.2f} jobs/s)" if report.ran else ""
        workers = f" with {report.workers} worker{'s' if report.workers != 1 else ''}" if report.workers else ""
        click.echo(f"{len(report.outcomes)} jobs: {report.count('ok')} done, {report.count('skipped')} already done, "
                   f"{report.count('failed')} failed, in {seconds:.1f} s{workers}{rate}; results in {report.results}",
                   err=True)
    if not report.succeeded:
        sys.exit(1)
