"""What ``wav2lip-trt serve`` was started with, checked once before anything starts."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..jobs.worker import WorkerSpec
from ..options import check_model_choices

TOKEN_ENV = "WAV2LIP_TRT_TOKEN"
LOCAL_HOSTS = ("localhost",)


@dataclass(frozen=True)
class ServeConfig:
    """The server's options; the model ones mean what they mean to ``infer`` and ``batch``."""

    checkpoint_path: Path  # Wav2Lip generator checkpoint, loaded once per worker
    s3fd_checkpoint: Path = Path("checkpoints/s3fd.pth")  # loaded when it exists (else jobs must give a box)
    device: str = "auto"
    backend: str = "torch"
    precision: str = "auto"
    engines_dir: Path = Path("engines")
    flavor: str = "auto"
    cache_dir: Path | None = None  # detection cache shared by the workers
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None  # bearer token; required for any bind other than the loopback
    workers: int | None = None  # None = one per GPU, or a few that split the CPU cores (as batch)
    state_dir: Path = Path("serve-state")  # jobs.sqlite3, uploads and results
    allow_path: tuple[Path, ...] = ()  # folders whose files a job may name instead of uploading them
    max_upload_mb: float = 512.0  # one request's body
    queue_size: int = 16  # jobs waiting for a worker; more is refused with 429
    drain_seconds: float = 30.0  # SIGTERM: how long running jobs get to finish before they are re-queued
    max_jobs_per_client: int = 0  # queued + running jobs one client address may have; 0 = no limit
    keep_hours: float = 24.0  # a finished job (row, uploads, result) is deleted this long after it ended; 0 = never
    ray: str | None = None  # serve --ray: a Ray cluster's address (auto, HOST:PORT, ray://...), or local
    min_replicas: int = 1  # with --ray: workers kept while idle (0: none until a job comes)
    max_replicas: int | None = None  # with --ray: the most workers [one per GPU; on CPUs as batch --ray]
    ray_timeout: float = 30.0  # with --ray ADDRESS: seconds to wait for the cluster to answer
    max_disk_gb: float = 20.0  # jobs' uploads + outputs under the state dir (10**9 bytes); 0 = no limit
    quota_grace_minutes: float = 10.0  # a finished job this young is never deleted to make room
    request_timeout: float = 60.0  # seconds for a request's headers, and then its body, to arrive in full
    job_timeout: float = 0.0  # seconds a job may run in its worker; 0 = no limit (inputs are bounded anyway)

    def validate(self) -> None:
        """:class:`InputError` for a start that must be refused (a public bind without a token, ...)."""
        check_model_choices(self.checkpoint_path, self.device, self.backend, self.precision)
        if not is_loopback(self.host) and not self.token:
            raise InputError(f"--host {self.host} is reachable from other machines: give --token (or set {TOKEN_ENV}) "
                             "so every request must carry it, or bind 127.0.0.1")
        if self.token is not None and len(self.token) < 16:
            raise InputError("--token must be at least 16 characters (e.g. python -c 'import secrets; "
                             "print(secrets.token_urlsafe())')")
        if not 0 <= self.port <= 65535:
            raise InputError(f"--port must be in 0..65535, got {self.port}")
        if self.workers is not None and self.workers < 1:
            raise InputError(f"--workers must be at least 1, got {self.workers}")
        if self.queue_size < 0:
            raise InputError(f"--queue-size must be 0 or more, got {self.queue_size}")
        if self.max_jobs_per_client < 0:
            raise InputError(f"--max-jobs-per-client must be 0 (no limit) or more, got {self.max_jobs_per_client}")
        if not self.keep_hours >= 0:
            raise InputError(f"--keep-hours must be 0 (keep forever) or more, got {self.keep_hours}")
        self._validate_ray()
        if not self.max_disk_gb >= 0:
            raise InputError(f"--max-disk-gb must be 0 (no limit) or more, got {self.max_disk_gb}")
        if not self.quota_grace_minutes >= 0:
            raise InputError(f"--quota-grace-minutes must be 0 or more, got {self.quota_grace_minutes}")
        if not self.request_timeout > 0:
            raise InputError(f"--request-timeout must be positive, got {self.request_timeout}")
        if not self.job_timeout >= 0:
            raise InputError(f"--job-timeout must be 0 (no limit) or more, got {self.job_timeout}")
        if not self.max_upload_mb > 0:
            raise InputError(f"--max-upload-mb must be positive, got {self.max_upload_mb}")
        for root in self.allow_path:
            if not Path(root).is_dir():
                raise InputError(f"--allow-path {root}: not a folder")
        try:
            Path(self.state_dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"--state-dir {self.state_dir}: cannot create it: {exc.strerror or exc}") from None
        if not os.access(self.state_dir, os.W_OK):
            raise InputError(f"--state-dir {self.state_dir}: not writable")

    def _validate_ray(self) -> None:
        if self.ray is None:
            if self.min_replicas != 1 or self.max_replicas is not None:
                raise InputError("--min-replicas and --max-replicas are for --ray (locally, --workers sets "
                                 "the workers)")
            return
        if self.workers is not None:
            raise InputError("--workers is for a local server: with --ray, --min-replicas and --max-replicas "
                             "bound the workers")
        if self.min_replicas < 0:
            raise InputError(f"--min-replicas must be 0 or more, got {self.min_replicas}")
        if self.max_replicas is not None and self.max_replicas < max(1, self.min_replicas):
            raise InputError(f"--max-replicas must be at least 1 and at least --min-replicas "
                             f"({self.min_replicas}), got {self.max_replicas}")
        if not self.ray_timeout > 0:
            raise InputError(f"--ray-timeout must be positive, got {self.ray_timeout}")

    def worker_spec(self, threads: int | None) -> WorkerSpec:
        """What each worker (process or Ray replica) loads: absolute paths, since a worker may run elsewhere."""
        s3fd = Path(self.s3fd_checkpoint)
        return WorkerSpec(Path(self.checkpoint_path).absolute(), s3fd.absolute() if s3fd.is_file() else None,
                          self.device, self.backend, self.precision, Path(self.engines_dir).absolute(), self.flavor,
                          threads=threads)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * (1 << 20))

    @property
    def max_disk_bytes(self) -> int:
        return int(self.max_disk_gb * 10**9)

    @property
    def allowed_roots(self) -> tuple[Path, ...]:
        return tuple(Path(root).resolve() for root in self.allow_path)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``: addresses no other machine can reach."""
    if host in LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
