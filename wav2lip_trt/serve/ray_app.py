"""``serve --ray``: the same app as a Ray Serve application, its workers spread over a Ray cluster.

Two deployments. The ingress (one replica) holds what a local server holds: the FastAPI app of
:func:`.app.create_app`, the :class:`~.service.JobService` and its SQLite store (one writer, as
locally), but its pool is a :class:`~.ray_pool.RayPool`. The workers
(:class:`~.ray_worker.SessionWorker`) hold a session each: one replica per GPU (``num_gpus=1``) on
a cluster with GPUs, else a share of the CPUs as ``batch --ray`` gives its actors, and Serve scales
them between ``--min-replicas`` and ``--max-replicas`` on the jobs waiting and running. Ray Serve's
proxy answers HTTP at ``--host``/``--port`` on every node.

Files travel as paths, as in ``batch --ray``: ``--state-dir`` (uploads, results, the job table),
the checkpoints and any ``--allow-path`` folder must be on storage every node sees at the same path.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import replace
from typing import Any

from ..errors import MissingDependencyError
from ..jobs.local import STOP_SECONDS
from ..jobs.ray_runner import connect, import_ray, placement
from .config import ServeConfig
from .ray_worker import CLEANUP_SECONDS, Mailbox, SessionWorker

log = logging.getLogger(__name__)

INSTALL = "pip install 'wav2lip-trt[serve]'"
APP = "wav2lip-trt"
INGRESS = "wav2lip-trt-app"
WORKER = "wav2lip-trt-worker"
INGRESS_REQUESTS = 1000  # open event streams and uploads at once (each an ongoing request to Serve)
UPSCALE_SECONDS = 2.0  # jobs waiting this long bring another replica (up to --max-replicas)
LOOK_BACK_SECONDS = 10.0  # the jobs running and waiting are averaged over this long (Serve's default: 30 s)
DOWNSCALE_SECONDS = 120.0  # an idle replica (and its loaded session) is kept this long
STREAMS_END_SECONDS = 3.0  # after the drain starts, event streams see it within a poll (events.POLL_SECONDS)


def import_serve(address: str, timeout: float) -> tuple[Any, Any]:
    """(ray, ray.serve), or :class:`MissingDependencyError` saying what to install (before Ray is imported:
    :func:`~wav2lip_trt.jobs.ray_runner.import_ray` sets how long Ray waits for a cluster)."""
    try:
        ray = import_ray(address, timeout)
        from ray import serve
    except (ImportError, MissingDependencyError):
        raise MissingDependencyError(f"serve --ray needs Ray Serve, which is not installed: {INSTALL}") from None
    return ray, serve


class Ingress:
    """The app's replica: the jobs service over a :class:`~.ray_pool.RayPool` of the worker deployment.

    Made a Serve ingress by :func:`application` (``serve.ingress``): Serve calls
    ``__serve_build_asgi_app__`` once this has made the service, and runs the app's lifespan
    (workers followed, the drain on the way out) as uvicorn does locally.
    """

    def __init__(self, config: ServeConfig, worker: Any, log_level: int = logging.WARNING) -> None:
        import ray

        from .ray_pool import RayPool
        from .service import JobService

        logging.basicConfig(level=log_level, format="[serve] %(message)s")
        mailbox = ray.remote(Mailbox).options(num_cpus=0).remote()
        self.service = JobService(config, log_level=log_level,
                                  pool=lambda listener: RayPool(worker, mailbox, listener, app=APP, deployment=WORKER))

    def __serve_build_asgi_app__(self) -> Any:
        from .app import create_app

        return GoneIsDisconnect(create_app(self.service))

    def begin_drain(self) -> None:
        """Stop taking jobs and end the event streams, so the requests Serve waits for before it stops us end."""
        self.service.stopping = True


class GoneIsDisconnect:
    """Ray Serve's ``receive`` raises (``TaskCancelledError``) once a client has gone, where uvicorn's returns a
    disconnect message: the app gets the disconnect it handles (an event stream ends), not an internal error."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        import ray

        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        gone = {"type": "http.disconnect"} if scope["type"] == "http" else {"type": "websocket.disconnect",
                                                                             "code": 1006}

        async def received() -> Any:
            try:
                return await receive()
            except ray.exceptions.RayError:
                return gone

        await self.app(scope, received, send)


def application(config: ServeConfig, log_level: int = logging.WARNING) -> Any:
    """The bound Serve application for ``config`` on the connected cluster (its size decides the replicas)."""
    import ray
    from ray import serve

    where = placement(ray, config.device, config.max_replicas)
    most = where.workers
    least = min(config.min_replicas, most)
    grace = config.drain_seconds + CLEANUP_SECONDS + STOP_SECONDS
    worker = serve.deployment(SessionWorker).options(
        name=WORKER, max_ongoing_requests=1, graceful_shutdown_timeout_s=grace,
        ray_actor_options={"num_cpus": where.num_cpus, "num_gpus": where.num_gpus},
        autoscaling_config={"min_replicas": least, "max_replicas": most, "initial_replicas": max(1, least),
                            "target_ongoing_requests": 1, "upscale_delay_s": UPSCALE_SECONDS,
                            "downscale_delay_s": DOWNSCALE_SECONDS, "look_back_period_s": LOOK_BACK_SECONDS})
    ingress = serve.deployment(serve.ingress()(Ingress)).options(
        name=INGRESS, num_replicas=1, max_ongoing_requests=INGRESS_REQUESTS, ray_actor_options={"num_cpus": 0},
        graceful_shutdown_timeout_s=STREAMS_END_SECONDS + grace + STOP_SECONDS)
    log.info("Ray Serve: %d to %d workers, %g CPU and %d GPU each", least, most, where.num_cpus, where.num_gpus)
    app_config = replace(config, workers=most)  # the app's queue bound and /readyz count the most workers
    return ingress.bind(app_config, worker.bind(config.worker_spec(where.threads), log_level), log_level)


def deploy(config: ServeConfig, log_level: int = logging.WARNING) -> Any:
    """Start Serve's proxies at ``--host``/``--port`` and run the application; returns its ingress handle."""
    from ray import serve

    logs = {"log_level": log_level, "enable_access_log": False}  # the replicas' logs reach this process's stderr
    serve.start(http_options={"host": config.host, "port": config.port}, logging_config=logs)
    return serve.run(application(config, log_level), name=APP, route_prefix="/", logging_config=logs)


def undeploy(handle: Any) -> None:
    """The drain: streams end, running jobs get ``--drain-seconds``, the rest are queued for the next start."""
    from ray import serve

    try:
        handle.begin_drain.remote().result(timeout_s=STREAMS_END_SECONDS * 10)
    except Exception as exc:  # the ingress is gone already: nothing to drain
        log.warning("the app did not answer the drain: %s", exc)
    serve.delete(APP)


def serve_on_ray(config: ServeConfig, *, log_level: int = logging.WARNING) -> None:
    """Run the app on the Ray cluster at ``config.ray`` until interrupted (SIGINT, SIGTERM), then drain and return.

    A Ray instance started here (no address) is stopped on the way out; on a cluster only this
    application is deleted. Signals reach only this process for the drain to work: a signal to the
    whole process group stops a local Ray instance at once too (run ``ray start`` apart, then ``--ray auto``).
    """
    ray, _ = import_serve(config.ray or "local", config.ray_timeout)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    started = connect(ray, config.ray or "local", log_level, config.ray_timeout)
    for sig, handler in handlers.items():  # Ray's own (exit at once) would skip the drain
        if handler is not None:
            signal.signal(sig, handler)
    try:
        handle = deploy(config, log_level)
        log.info("serving on http://%s:%d/ through Ray Serve (state in %s)", config.host, config.port,
                 config.state_dir)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:  # the CLI's SIGINT/SIGTERM: a stop asked for, a clean exit after the drain
            pass
        undeploy(handle)
    finally:
        if started:
            ray.shutdown()
