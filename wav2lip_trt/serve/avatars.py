"""The avatars of a server: prepared once by a worker, kept under ``STATE_DIR/avatars/ID``, reused.

An avatar (:mod:`wav2lip_trt.live.avatar`) is what a live session and an avatar job need of a face:
frames, boxes and face crops. ``POST /v1/avatars`` stores the face as a job's upload is stored
(under ``STATE_DIR/avatar-uploads/ID``, kept as long as the avatar) or takes ``face_path`` under
``--allow-path``, checks it as ``wav2lip-trt avatar`` would before any model loads, and queues an
:class:`~.tasks.AvatarTask`: a worker runs
:func:`~wav2lip_trt.live.avatar.make_avatar`, which writes the folder beside itself and renames it
when complete. The row in the store (:class:`~.store.AvatarStore`) says how far it got: a restart
finds a folder complete (succeeded) or queues the preparation again.

An avatar job (``POST /v1/jobs`` with ``avatar``) is a job whose face is the avatar folder: the
offline stream of the avatar with the uploaded audio (:class:`~.tasks.StreamTask`), stored, queued,
reported, cancelled and recovered as every job is.
"""

from __future__ import annotations

import functools
import json
import logging
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import Wav2LipTrtError
from .store import AvatarRow, AvatarStore, JobRow
from .tasks import STREAM_DEFAULTS, AvatarTask, StreamTask
from .uploads import RESULT_NAME, Incoming, UploadError, inference_options, parse_options, remove, resolve_allowed, \
    store
from .worker_tasks import avatar_summary

if TYPE_CHECKING:
    from .service import JobService

log = logging.getLogger(__name__)

PAGE_LIMIT = 100
QUOTA_KEY = "avatar:"  # an avatar's share of the disk quota (a job's key is its id)
LOOPS = ("forward", "pingpong")  # wav2lip_trt.live.avatar.LOOPS (not imported: it loads torch)
AVATAR_FIELDS = ("static", "fps", "pads", "face_det_batch_size", "resize_factor", "crop", "box", "rotate", "nosmooth",
                 "on_missing_face", "boxes", "detect_every", "detect_size")
"""What an avatar takes (``wav2lip-trt avatar``'s face options; the cache is the server's), and ``loop``."""


class AvatarService:
    """The server's avatars; the pool's reports on an avatar's preparation come here (:func:`routed`)."""

    def __init__(self, jobs: JobService) -> None:
        self.jobs, self.config = jobs, jobs.config
        self.dir = jobs.state_dir / "avatars"
        self.uploads = jobs.state_dir / "avatar-uploads"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.uploads.mkdir(parents=True, exist_ok=True)
        jobs.quota.add_roots(QUOTA_KEY, self.dir, self.uploads)
        self.store = AvatarStore(jobs.store)
        self.tasks: set[str] = set()  # avatars in the pool (queued or being prepared)
        self.phase: dict[str, str] = {}

    def handles(self, task_id: str) -> bool:
        return task_id in self.tasks

    def recover(self) -> None:
        """At start: an avatar whose folder is complete succeeded; any other unfinished one is queued again."""
        from ..live.avatar import AvatarError, load_avatar

        for row in self.store.with_status("running", "queued"):
            self._remove_partial(row.id)
            try:
                avatar = load_avatar(row.folder, verify=False)
            except AvatarError:
                pass
            else:
                self.job_done(row.id, {**avatar_summary(avatar), "recovered": True}, None, -1)
                continue
            try:
                task = self._task(Path(row.face), Path(row.folder), row.options)
            except Wav2LipTrtError as exc:
                self.job_failed(row.id, str(exc))
                continue
            self.store.update(row.id, status="queued")
            self.tasks.add(row.id)
            self.jobs.pool.submit(row.id, task)

    # ---- requests ---------------------------------------------------------------------------------

    def submit(self, face: Incoming, options_text: str | None, client: str | None) -> dict[str, Any]:
        """A new avatar from a request (blocking: the face is copied and opened); its public view."""
        given = _avatar_options(options_text)
        avatar_id = secrets.token_hex(8)
        uploads = self.uploads / avatar_id
        uploads.mkdir()
        try:
            path = self._input(face, uploads)
            folder = self.dir / avatar_id
            task = self._task(path, folder, given, {path: face.name})
            self.store.add(avatar_id, str(path), str(folder), given, {"face": face.name}, client)
            self._account(avatar_id)
        except BaseException:
            remove(uploads)
            self.jobs.quota.forget(QUOTA_KEY + avatar_id)
            raise
        self.tasks.add(avatar_id)
        self.jobs.pool.submit(avatar_id, task)
        return self.view(avatar_id)

    def _input(self, incoming: Incoming, folder: Path) -> Path:
        """An upload stored in ``folder``, or a path under ``--allow-path``, as a job's inputs are."""
        if incoming.stream is not None:
            return store(incoming, folder, self.config.max_upload_bytes)
        if incoming.path:
            return resolve_allowed(f"{incoming.field}_path", incoming.path, self.config.allowed_roots)
        raise UploadError(f"missing {incoming.field}: upload it in field {incoming.field} (or give "
                          f"{incoming.field}_path under --allow-path)")

    def _task(self, face: Path, folder: Path, given: dict[str, Any],
              names: dict[Path, str] | None = None) -> AvatarTask:
        """The preparation of ``face`` into ``folder``, checked as ``wav2lip-trt avatar`` checks before loading."""
        rest = {name: value for name, value in given.items() if name != "loop"}
        _, typed = parse_options(json.dumps(rest))
        if "boxes" in typed:
            typed["boxes"] = resolve_allowed("boxes", str(typed["boxes"]), self.config.allowed_roots)
        options = inference_options(self.config, face, face, folder / "stream.mp4", typed)
        try:
            options.validate()
            options.check_face_source()
        except Wav2LipTrtError as exc:
            raise UploadError(_client_words(str(exc), names or {})) from None
        return AvatarTask(options, folder, given.get("loop", "forward"))

    def view(self, avatar_id: str) -> dict[str, Any]:
        return self._view(self._row(avatar_id))

    def _row(self, avatar_id: str) -> AvatarRow:
        row = self.store.get(avatar_id)
        if row is None:
            raise UploadError(f"no avatar {avatar_id} (never created, or deleted)", 404)
        return row

    def _view(self, row: AvatarRow) -> dict[str, Any]:
        report = row.report or {}
        return {"id": row.id, "status": row.status, "created": row.created, "started": row.started,
                "finished": row.finished, "attempts": row.attempts, "files": row.names, "options": row.options,
                "phase": self.phase.get(row.id, row.status), "error": row.error,
                "frames": report.get("frames"), "positions": report.get("positions"), "width": report.get("width"),
                "height": report.get("height"), "fps": report.get("fps"),
                "loop": report.get("loop", row.options.get("loop", "forward")), "detection": report.get("detection"),
                "seconds": report.get("seconds")}

    def page(self, limit: int, before: float | None) -> dict[str, Any]:
        limit = max(1, min(limit, PAGE_LIMIT))
        avatars = [self._view(row) for row in self.store.page(limit, before)]
        return {"avatars": avatars, "next_before": avatars[-1]["created"] if len(avatars) == limit else None}

    def folder(self, avatar_id: str) -> tuple[Path, dict[str, Any]]:
        """A prepared avatar's folder and view (for a live session or a job); :class:`UploadError` otherwise."""
        row = self._row(avatar_id)
        if row.status != "succeeded":
            why = f": {row.error}" if row.error else ""
            raise UploadError(f"avatar {avatar_id} is {row.status}, not ready to use{why}", 409)
        return Path(row.folder), self._view(row)

    def delete(self, avatar_id: str) -> dict[str, Any]:
        """A finished avatar is deleted with its files; one being prepared is cancelled (and then deleted)."""
        row = self._row(avatar_id)
        if row.status in ("queued", "running"):
            if self.jobs.pool.cancel(avatar_id) != "running":
                self.job_cancelled(avatar_id)
            return {"id": avatar_id, "status": "cancelled"}
        self._forget(row)
        return {"id": avatar_id, "status": "deleted"}

    def _forget(self, row: AvatarRow) -> None:
        self.store.delete(row.id)
        shutil.rmtree(row.folder, ignore_errors=True)
        remove(self.uploads / row.id)
        self._remove_partial(row.id)
        self.phase.pop(row.id, None)
        self.jobs.quota.forget(QUOTA_KEY + row.id)

    def _account(self, avatar_id: str) -> None:
        """An avatar's folder and its kept upload count against --max-disk-gb (they are never evicted)."""
        self.jobs.quota.account(QUOTA_KEY + avatar_id, self.dir / avatar_id, self.uploads / avatar_id)

    def _remove_partial(self, avatar_id: str) -> None:
        for partial in self.dir.glob(f".{avatar_id}.*"):
            shutil.rmtree(partial, ignore_errors=True)

    # ---- avatar jobs ------------------------------------------------------------------------------

    def submit_job(self, avatar_id: str, audio: Incoming, options_text: str | None,
                   client: str | None) -> dict[str, Any]:
        """A job that streams the avatar with the audio (``wav2lip-trt stream``'s output); its public view."""
        from ..audio import load_audio

        folder, _ = self.folder(avatar_id)
        given, typed = _stream_options(options_text)
        job_id = secrets.token_hex(8)
        job_dir = self.jobs.jobs_dir / job_id
        job_dir.mkdir()
        try:
            path = self._input(audio, job_dir)
            try:
                load_audio(path)
            except Wav2LipTrtError as exc:
                raise UploadError(_client_words(str(exc), {path: audio.name})) from None
            outfile = job_dir / RESULT_NAME
            names = {"face": f"avatar {avatar_id}", "audio": audio.name}
            self.jobs.store.add(job_id, str(folder), str(path), str(outfile), {"avatar": avatar_id, **given}, names,
                                client)
        except BaseException:
            remove(job_dir)
            raise
        self.jobs.enqueue(job_id, StreamTask(folder, path, outfile, {**STREAM_DEFAULTS, **typed}))
        return self.jobs.view(job_id)

    def stream_task(self, row: JobRow) -> StreamTask:
        """An avatar job's task again, from its row (a restart re-queues it)."""
        rest = {name: value for name, value in row.options.items() if name != "avatar"}
        _, typed = _stream_options(json.dumps(rest))
        return StreamTask(Path(row.face), Path(row.audio), Path(row.outfile), {**STREAM_DEFAULTS, **typed})

    # ---- pool callbacks (the pool's thread) ---------------------------------------------------------

    def job_started(self, avatar_id: str, attempt: int) -> None:
        self.phase[avatar_id] = "starting"
        self.store.update(avatar_id, status="running", started=time.time(), attempts=attempt)

    def job_phase(self, avatar_id: str, label: str) -> None:
        self.phase[avatar_id] = label

    def job_total(self, avatar_id: str, frames: int) -> None:
        pass

    def job_frame(self, avatar_id: str, done: int) -> None:
        pass

    def job_done(self, avatar_id: str, report: dict[str, Any], memory: int | None, worker: int) -> None:
        self._ended(avatar_id)
        self._account(avatar_id)
        self.store.update(avatar_id, status="succeeded", finished=time.time(), report=report, error=None)

    def job_failed(self, avatar_id: str, error: str) -> None:
        self._ended(avatar_id)
        row = self.store.get(avatar_id)
        if row is not None:
            error = _client_words(error, {Path(row.face): row.names.get("face", "face"),
                                          Path(row.folder): f"avatar {avatar_id}"})
        self.store.update(avatar_id, status="failed", finished=time.time(), error=error)
        remove(self.uploads / avatar_id)
        self._remove_partial(avatar_id)
        self._account(avatar_id)

    def job_cancelled(self, avatar_id: str) -> None:
        self._ended(avatar_id)
        row = self.store.get(avatar_id)
        if row is not None:
            self._forget(row)

    def job_retried(self, avatar_id: str, why: str) -> None:
        self.phase[avatar_id] = f"retrying: its worker died ({why})"
        self.store.update(avatar_id, status="queued")

    def _ended(self, avatar_id: str) -> None:
        self.tasks.discard(avatar_id)
        self.phase.pop(avatar_id, None)


def routed(method: Callable[..., Any]) -> Callable[..., Any]:
    """A pool report (``job_started(task_id, ...)``, ...) on an avatar's preparation goes to the avatars
    (any pool, local or Ray, reports to the job service alone)."""

    @functools.wraps(method)
    def route(service: Any, task_id: str, *args: Any) -> Any:
        avatars = getattr(service, "avatars", None)
        if avatars is not None and avatars.handles(task_id):
            return getattr(avatars, method.__name__)(task_id, *args)
        return method(service, task_id, *args)

    return route


def _avatar_options(text: str | None) -> dict[str, Any]:
    """The ``options`` of an avatar, as given (JSON types), checked: avatar options only, ``loop`` one of LOOPS."""
    raw: Any = None
    if text is not None and text.strip():
        try:
            raw = json.loads(text)
        except json.JSONDecodeError:
            raw = None
    loop = raw.pop("loop", "forward") if isinstance(raw, dict) else "forward"
    if loop not in LOOPS:
        raise UploadError(f"options: loop must be one of {', '.join(LOOPS)}, got {loop!r}")
    given, _ = parse_options(json.dumps(raw) if isinstance(raw, dict) else text)
    for name in given:
        if name not in AVATAR_FIELDS:
            raise UploadError(f"options: {name} is not an avatar option; an avatar takes "
                              f"{', '.join(sorted((*AVATAR_FIELDS, 'loop')))}")
    return {**given, "loop": loop}


def _stream_options(text: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """An avatar job's ``options``: the output's only (its face options were fixed with the avatar)."""
    given, typed = parse_options(text)
    for name in given:
        if name not in STREAM_DEFAULTS:
            raise UploadError(f"options: {name} does not apply to an avatar job (the avatar fixed the face's "
                              f"options); it takes {', '.join(sorted(STREAM_DEFAULTS))}")
    return given, typed


def _client_words(message: str, names: dict[Path, str]) -> str:
    """``message`` naming the client's files, never the server's paths."""
    for stored, name in sorted(names.items(), key=lambda item: -len(str(item[0]))):
        message = message.replace(str(stored), name)
    return message
