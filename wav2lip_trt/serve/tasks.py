"""What the pool hands a worker besides a lip-sync job: an avatar to prepare, an avatar job, a live session.

A task's kind is its type (:func:`task_kind`), so :meth:`~.pool.ServePool.submit` takes any of them
the same way, and a worker (a local process, or a Ray replica) dispatches on it. Plain data only:
these cross a pipe (pickled) and must not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..files import temporary_siblings
from ..options import InferenceOptions

STREAM_DEFAULTS: dict[str, Any] = {"crf": 18, "preset": "veryfast", "encoder": "auto", "blend": "none",
                                   "wav2lip_batch_size": 128}
"""An avatar job's output options, with ``wav2lip-trt stream``'s defaults (so its output equals the command's)."""

LIVE_DEFAULTS: dict[str, Any] = {"rate": 16000, "clock": "audio", "policy": None, "queue_frames": 8, "max_batch": 16,
                                 "delay": 0.8, "jpeg_quality": 90}
"""A live session's settings; policy None = ``block`` on the audio clock (back-pressure to the client),
``drop`` on the wall clock (a late client loses frames, the clock keeps going)."""


@dataclass(frozen=True)
class AvatarTask:
    """Prepare ``options.face`` into the avatar folder ``out`` (:func:`wav2lip_trt.live.avatar.make_avatar`)."""

    options: InferenceOptions  # the face options; audio and outfile are placeholders, never read or written
    out: Path
    loop: str = "forward"


@dataclass(frozen=True)
class StreamTask:
    """The offline stream of avatar folder ``avatar`` with ``audio`` into ``outfile`` (``wav2lip-trt stream``)."""

    avatar: Path
    audio: Path
    outfile: Path
    settings: dict[str, Any] = field(default_factory=lambda: dict(STREAM_DEFAULTS))


@dataclass(frozen=True)
class LiveTask:
    """A live session of avatar folder ``avatar``: PCM in over the pipe, JPEG frames back (:mod:`.channel`)."""

    avatar: Path
    settings: dict[str, Any] = field(default_factory=lambda: dict(LIVE_DEFAULTS))


Task = InferenceOptions | AvatarTask | StreamTask | LiveTask
KINDS = {InferenceOptions: "job", AvatarTask: "avatar", StreamTask: "avatar-job", LiveTask: "live"}


def task_kind(task: Task) -> str:
    """``job``, ``avatar``, ``avatar-job`` or ``live``."""
    return KINDS[type(task)]


def partial_paths(task: Task) -> list[Path]:
    """What a killed worker may have left of ``task``: temporary files and folders (only those name patterns)."""
    if isinstance(task, (InferenceOptions, StreamTask)):
        return sorted(temporary_siblings(task.outfile))
    if isinstance(task, AvatarTask):
        return sorted(task.out.parent.glob(f".{task.out.name}.partial-*")) + \
            sorted(task.out.parent.glob(f".{task.out.name}.old-*"))
    return []
