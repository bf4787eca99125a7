"""The same jobs on a Ray cluster: each worker a Ray actor holding one session.

Ray schedules the actors (``num_gpus=1`` each on a cluster with GPUs, so one per GPU, and Ray sets
each one's ``CUDA_VISIBLE_DEVICES``); this module hands each free actor the next job and takes the
results back as they finish (``ray.wait``), in whatever order. An actor that dies (its node lost,
its process killed for memory) is replaced, the temporary output it was writing is removed, and the
job it was running is retried once on another.

Files travel as paths, never as bytes: every node must see the inputs and write the outputs at the
same paths (shared storage such as NFS or a mounted bucket). Ray is an optional extra; without it,
asking for it is one :class:`MissingDependencyError` that says what to install.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .. import errors
from ..errors import InputError, MissingDependencyError
from .local import default_workers
from .results import Outcome
from .worker import Task, WorkerSpec, failed, open_session, remove_temporaries, run_task, temporaries, this_worker

log = logging.getLogger(__name__)

INSTALL = "pip install 'wav2lip-trt[ray]'"
LOCAL = "local"  # --ray with no address: start a Ray instance on this machine for this batch


def import_ray(address: str | None = None, timeout: float = 30.0) -> Any:
    """Ray, or :class:`MissingDependencyError` saying what to install.

    For a cluster ``address``, Ray's own connection warnings are put past ``timeout`` (its setting is
    read when Ray is imported): the batch says once, as one error, that nothing answered.
    """
    if address not in (None, LOCAL) and "ray" not in sys.modules:
        os.environ.setdefault("RAY_gcs_rpc_server_connect_timeout_s", str(math.ceil(timeout) + 60))  # past our exit
    try:
        import ray
    except ImportError:
        raise MissingDependencyError(f"--ray needs Ray, which is not installed: {INSTALL}") from None
    return ray


class SessionActor:
    """A Ray actor's state: one session, loaded when the actor starts, reused by every job it is handed."""

    def __init__(self, spec: WorkerSpec, log_level: int = logging.WARNING) -> None:
        logging.basicConfig(level=log_level, format="%(message)s")
        self.name = this_worker("ray")
        self.session: Any = None
        self.error: tuple[str, str] | None = None
        try:
            self.session = open_session(spec)
        except errors.Wav2LipTrtError as exc:  # reported by ready(): every job would hit it
            self.error = (type(exc).__name__, str(exc))

    def ready(self) -> tuple[str, str] | None:
        """None once the session is loaded, else the loader's error (class name, message)."""
        return self.error

    def run(self, task: Task) -> Outcome:
        return run_task(self.session, task, self.name)


@dataclass(frozen=True)
class Placement:
    """How many actors, and what each asks Ray for."""

    workers: int
    num_cpus: float
    num_gpus: int
    threads: int | None  # torch threads in each actor; None = torch's default (a GPU actor)


def placement(ray: Any, device: str, workers: int | None) -> Placement:
    """One actor per GPU on a cluster with GPUs; on CPUs a few actors per node's worth of cores, as locally."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0)) if device != "cpu" else 0
    if gpus:
        return Placement(workers or gpus, 1, 1, None)
    if device == "cuda":
        raise InputError("--device cuda: the Ray cluster has no GPU")
    cpus = max(1, int(resources.get("CPU", 1)))
    node_cpus = max((node["Resources"].get("CPU", 0) for node in ray.nodes() if node.get("Alive")), default=cpus)
    count = workers or default_workers("cpu", cpus)
    share = min(cpus / count, max(1.0, node_cpus))
    return Placement(count, share, 0, max(1, int(share)))


def connect(ray: Any, address: str, log_level: int, timeout: float = 30.0) -> bool:
    """Join ``address`` (``auto``, ``ray://HOST:PORT``, ``HOST:PORT``) or start a local instance; True if started here.

    A Ray already initialised in this process is used as it is (and left running). Ray retries an
    address where nothing answers (a closed port) forever, inside native code where no signal handler
    runs; so the connection is made on a helper thread while this one waits at most ``timeout``
    seconds, and SIGINT/SIGTERM stay what they are everywhere else. A connection given up on is left
    to die with the process, which is about to end with the error.
    """
    if ray.is_initialized():
        return False
    if address == LOCAL:
        try:
            ray.init(address="local", include_dashboard=False, logging_level=log_level)
        except Exception as exc:
            raise InputError(f"--ray: cannot start a local Ray instance: {_first_line(exc)}") from None
        return True
    failure: list[BaseException] = []
    done = threading.Event()

    def join() -> None:
        try:
            ray.init(address=address, logging_level=log_level)
        except BaseException as exc:  # ConnectionError, a missing ray[client] for ray://, a malformed address, ...
            failure.append(exc)
        finally:
            done.set()

    ray_init_log = logging.getLogger("ray._private.worker")
    quiet = _QuietThreadWarning()
    ray_init_log.addFilter(quiet)  # "SIGTERM handler is not set ...": ours stays, as intended
    try:
        threading.Thread(target=join, name="wav2lip-trt-ray-connect", daemon=True).start()
        answered = done.wait(timeout)
    finally:
        ray_init_log.removeFilter(quiet)
    if not answered:
        raise InputError(f"--ray {address}: no Ray cluster answered within {timeout:g} s (is it running, and is the "
                         "address right? --ray-timeout sets the wait)")
    if failure:
        raise InputError(f"--ray {address}: cannot connect to the Ray cluster: {_first_line(failure[0])}") from None
    return False


class _QuietThreadWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "not the main thread" not in record.getMessage()


def run_on_ray(tasks: Sequence[Task], spec: WorkerSpec, *, address: str = LOCAL, workers: int | None = None,
               on_outcome: Callable[[Outcome], None], on_ready: Callable[[int], None] | None = None,
               log_level: int = logging.WARNING, timeout: float = 30.0) -> int:
    """Run every task on Ray actors holding a session each; ``on_outcome`` per finished job, as it finishes.

    ``timeout``: seconds to wait for the cluster at ``address`` to answer. Returns the number of actors.
    """
    ray = import_ray()
    started = connect(ray, address, log_level, timeout)
    try:
        where = placement(ray, spec.device, workers)
        spec = replace(spec, threads=spec.threads or where.threads)  # --threads-per-worker first; None: torch's
        actor = ray.remote(SessionActor).options(num_cpus=where.num_cpus, num_gpus=where.num_gpus)
        log.info("Ray: %d actors, %g CPU and %d GPU each", where.workers, where.num_cpus, where.num_gpus)
        dispatch(ray, lambda: actor.remote(spec, log_level), where.workers, tasks, on_outcome, on_ready)
        return min(where.workers, len(tasks))
    finally:
        if started:
            ray.shutdown()


def dispatch(ray: Any, make_actor: Callable[[], Any], workers: int, tasks: Sequence[Task],
             on_outcome: Callable[[Outcome], None], on_ready: Callable[[int], None] | None = None) -> None:
    """Hand tasks to free actors and report each outcome as it arrives; retry once the job of an actor that died.

    ``make_actor()`` returns a new actor handle with ``ready()`` and ``run(task)`` methods.
    """
    gone = _lost_worker_errors(ray)
    pending = deque(tasks)
    in_flight: dict[Any, tuple[Any, Task | None]] = {}  # object ref -> (actor, its task; None for ready())
    actors: list[Any] = []
    idle: list[Any] = []  # loaded actors without a job
    before: dict[int, set[Path]] = {}  # by line: the job's temporary files that existed when it was handed out
    orphans: list[Task] = []  # jobs whose actor died: their temporary files go (again) at the end
    ready = load_deaths = 0
    restarts = len(tasks) + workers

    def start() -> None:
        handle = make_actor()
        actors.append(handle)
        in_flight[handle.ready.remote()] = (handle, None)

    try:
        for _ in range(min(workers, len(pending))):
            start()
        while in_flight:
            (ref,), _ = ray.wait(list(in_flight), num_returns=1)
            handle, task = in_flight.pop(ref)
            try:
                value = ray.get(ref)
            except gone as exc:
                actors.remove(handle)
                ray.kill(handle)
                if task is None:
                    load_deaths += 1
                    if load_deaths > 1 and ready == 0:  # a second actor died loading: it will not get better
                        raise InputError(f"Ray actors die while loading the models: {_first_line(exc)}") from None
                else:
                    orphans.append(task)
                    remove_temporaries(task, before[task.line])  # before a retry starts its own
                    if task.attempt == 1:
                        log.warning("Ray actor died running line %d (%s); retrying it on another", task.line,
                                    _first_line(exc))
                        pending.appendleft(replace(task, attempt=2))
                    else:
                        on_outcome(failed(task, f"its Ray actor died twice running it: {_first_line(exc)}", None))
                if pending and restarts > 0 and len(actors) < min(workers, len(pending) + len(in_flight)):
                    start()
                    restarts -= 1
            except ray.exceptions.RayTaskError as exc:  # a bug inside the actor's method; the actor lives on
                if task is None:
                    raise
                on_outcome(failed(task, f"internal error: {_first_line(exc)}", None))
                idle.append(handle)
            else:
                if task is None:
                    if value is not None:
                        raise getattr(errors, value[0], errors.Wav2LipTrtError)(value[1])
                    ready += 1
                    if on_ready is not None:
                        on_ready(ready)
                else:
                    on_outcome(value)
                idle.append(handle)
            while pending and idle:
                handle, task = idle.pop(), pending.popleft()
                before.setdefault(task.line, temporaries(task))  # the first hand-out: a retry keeps it
                in_flight[handle.run.remote(task)] = (handle, task)
        for lost in pending:  # every actor died and none could be started
            on_outcome(failed(lost, "no Ray actor left to run it", None))
    finally:
        for handle in actors:
            ray.kill(handle)
        for task in orphans:
            remove_temporaries(task, before[task.line])


def _lost_worker_errors(ray: Any) -> tuple[type[BaseException], ...]:
    """The exceptions that mean the actor (or its process or node) is gone, not that the job failed."""
    names = ("RayActorError", "WorkerCrashedError", "OutOfMemoryError", "NodeDiedError", "ObjectLostError")
    return tuple(getattr(ray.exceptions, name) for name in names if hasattr(ray.exceptions, name))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
