"""``wav2lip-trt serve``: the lip-sync HTTP service and its web page, on uvicorn."""

from __future__ import annotations

import logging
from pathlib import Path
from types import FrameType
from typing import Any

import click

from ..cli_errors import setup_logging, user_errors
from ..cli_options import RUNNER_OPTIONS, with_options
from ..errors import MissingDependencyError
from ..jobs.ray_runner import LOCAL as RAY_LOCAL
from .config import TOKEN_ENV, ServeConfig

log = logging.getLogger("wav2lip_trt.serve")

GRACEFUL_SECONDS = 5.0  # open connections (event streams end by themselves) before the drain starts


@click.command("serve")
@click.option("--checkpoint_path", "--checkpoint-path", "checkpoint_path", required=True,
              type=click.Path(path_type=Path), help="Wav2Lip checkpoint, loaded once per worker.")
@click.option("--s3fd-checkpoint", "--s3fd_checkpoint", "s3fd_checkpoint", type=click.Path(path_type=Path),
              default=Path("checkpoints/s3fd.pth"), show_default=True,
              help="S3FD face detector weights (without them every job must give a box).")
@with_options(*RUNNER_OPTIONS)
@click.option("--cache-dir", "cache_dir", type=click.Path(path_type=Path),
              help="Detection cache folder shared by the workers [$XDG_CACHE_HOME/wav2lip-trt].")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but the loopback needs --token.")
@click.option("--port", type=int, default=8000, show_default=True, help="TCP port to listen on.")
@click.option("--token", envvar=TOKEN_ENV, show_envvar=True,
              help="Bearer token every API request must carry (Authorization: Bearer TOKEN).")
@click.option("--workers", type=int, metavar="N",
              help="Worker processes, each holding one session. [one per GPU; on a CPU one per core, at most 4]")
@click.option("--state-dir", "state_dir", type=click.Path(path_type=Path), default=Path("serve-state"),
              show_default=True, help="Job state (SQLite), uploads and results; a restart picks up from here.")
@click.option("--allow-path", "allow_path", type=click.Path(path_type=Path), multiple=True, metavar="DIR",
              help="Let jobs name files under DIR (face_path, audio_path) instead of uploading them. Repeatable.")
@click.option("--max-upload-mb", "max_upload_mb", type=float, default=512.0, show_default=True,
              help="Largest request body, in MiB.")
@click.option("--queue-size", "queue_size", type=int, default=16, show_default=True,
              help="Jobs that may wait for a worker; beyond it a request gets 429 with Retry-After.")
@click.option("--drain-seconds", "drain_seconds", type=float, default=30.0, show_default=True,
              help="On SIGTERM, how long running jobs may finish before they are re-queued for the next start.")
@click.option("--max-jobs-per-client", "max_jobs_per_client", type=int, default=0, show_default=True,
              help="Queued + running jobs one client address may have (429 beyond); 0 = no limit.")
@click.option("--keep-hours", "keep_hours", type=float, default=24.0, show_default=True,
              help="Delete a finished job (its uploads and result) this long after it ended; 0 keeps jobs forever.")
@click.option("--ray", "ray", is_flag=False, flag_value=RAY_LOCAL, metavar="[ADDRESS]",
              help="Run as a Ray Serve application: the workers are replicas on a Ray cluster's ADDRESS (auto, "
                   "HOST:PORT, ray://HOST:PORT), or with no address on a Ray instance started here. --state-dir "
                   "and the checkpoints must be on storage every node sees at the same path.")
@click.option("--min-replicas", "min_replicas", type=int, default=1, show_default=True,
              help="With --ray: workers kept running while idle (0: none until a job comes).")
@click.option("--max-replicas", "max_replicas", type=int, metavar="N",
              help="With --ray: the most workers Ray Serve scales up to. [one per GPU of the cluster; on CPUs "
                   "as batch --ray]")
@click.option("--ray-timeout", "ray_timeout", type=float, default=30.0, show_default=True, metavar="SECONDS",
              help="With --ray ADDRESS: give up when the cluster does not answer within this time.")
@click.option("--max-disk-gb", "max_disk_gb", type=float, default=20.0, show_default=True,
              help="Disk quota for the jobs' uploads and results and the avatars under --state-dir, in GB; new "
                   "work beyond it gets 507 once the oldest finished jobs past --quota-grace-minutes are deleted; "
                   "0 = no limit.")
@click.option("--quota-grace-minutes", "quota_grace_minutes", type=float, default=10.0, show_default=True,
              help="A finished job is deleted to make room only once it ended at least this long ago.")
@click.option("--request-timeout", "request_timeout", type=float, default=60.0, show_default=True,
              help="Seconds a request's headers, and then its body, may take to arrive (408 beyond); event "
                   "streams and websockets are not limited.")
@click.option("--job-timeout", "job_timeout", type=float, default=0.0, show_default=True,
              help="Seconds a job may run in its worker before it is stopped and fails; 0 = no limit.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
@user_errors
def serve_command(quiet: bool, **kwargs: Any) -> None:
    """Serve lip-sync over HTTP: a job API (upload, progress events, result), a web page at /, /metrics.

    Stop it with SIGTERM or Ctrl-C: running jobs finish (or are re-queued for the next start) and it
    exits 0. Jobs and results survive a restart with the same --state-dir.
    """
    setup_logging(quiet)
    config = ServeConfig(**{**kwargs, "allow_path": tuple(kwargs["allow_path"])})
    config.validate()
    serve(config, log_level=logging.ERROR if quiet else logging.WARNING)


def serve(config: ServeConfig, *, log_level: int = logging.WARNING) -> None:
    """Run the server until SIGTERM or SIGINT; returns after the drain."""
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise MissingDependencyError(f"serve needs {exc.name}: pip install 'wav2lip-trt[serve]'") from None
    if config.ray is not None:
        from .ray_app import serve_on_ray

        serve_on_ray(config, log_level=log_level)
        return
    from .app import create_app
    from .service import JobService
    from .timeouts import header_deadline_protocol

    service = JobService(config, log_level=log_level)
    app = create_app(service)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            """Stop accepting and drain; a stop asked for is a clean exit (0), so the signal is not re-raised."""
            service.stopping = True
            if self.should_exit and sig == 2:
                self.force_exit = True
            self.should_exit = True

    uvicorn_config = uvicorn.Config(app, host=config.host, port=config.port, log_level=log_level,
                                    timeout_graceful_shutdown=GRACEFUL_SECONDS, access_log=False,
                                    server_header=False, http=header_deadline_protocol(config.request_timeout))
    where = f"http://{config.host}:{config.port}/"
    log.info("serving on %s (%d workers loading; state in %s)", where, service.workers, config.state_dir)
    Server(uvicorn_config).run()
