"""A request turned into a job (LitServe's ``decode_request``): files stored, probed, options typed.

Nothing the client names is trusted. Uploads are stored under names the server chooses (the job's
id; a suffix only from the file's first bytes, because the pipeline tells a still image from a video,
and a WAV from other audio, by the suffix). A path a client gives is opened only when it resolves
inside an ``--allow-path`` root. The options are those of a jobs file
(:func:`wav2lip_trt.jobs.spec.per_call_options`, by their Python names, with JSON types), less those
that would read or write other server files or run a program. The job is then prepared the way
``infer`` prepares one (:func:`wav2lip_trt.session.prepare_job`: options checked, the face opened, the
audio decoded), so an upload that is not media is refused now, with the CLI's message, naming the
client's file instead of the stored one.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import InputError, Wav2LipTrtError
from ..jobs.spec import REQUIRED, SHARED_OPTIONS, _coerce, per_call_options
from ..options import InferenceOptions
from .config import ServeConfig

REFUSED = {
    "ffmpeg": "it names a program to run on the server",
    "save_frames": "it writes files on the server",
    "dump_intermediates": "it writes files on the server",
}
"""Per-call options a client may not set."""
RESULT_NAME = "result.mp4"


class UploadError(InputError):
    """A request that cannot become a job; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Incoming:
    """One input of a request: an upload (``stream``) or a path under an allowed root (``path``)."""

    field: str  # "face" or "audio"
    name: str  # the client's file name or path, for messages and display only
    stream: BinaryIO | None = None
    path: str | None = None


def parse_options(text: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``options`` field: (as given, JSON-safe; typed as :class:`InferenceOptions` wants)."""
    if text is None or not text.strip():
        return {}, {}
    try:
        given = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UploadError(f"options: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(given, dict):
        raise UploadError(f"options: expected a JSON object of job options, got {type(given).__name__}")
    allowed = per_call_options()
    typed = {}
    for name, value in given.items():
        if name in REQUIRED:
            raise UploadError(f"options: {name} is not an option here: send the face and audio as files (fields face "
                              "and audio, or face_path and audio_path); the server chooses the output")
        if name in SHARED_OPTIONS:
            raise UploadError(f"options: {name} is chosen when the server starts, not per job")
        if name in REFUSED:
            raise UploadError(f"options: {name} cannot be set through the server: {REFUSED[name]}")
        if name not in allowed:
            raise UploadError(f"options: unknown option {name}; a job takes {', '.join(sorted(set(allowed) - set(REFUSED)))}")
        try:
            typed[name] = _coerce(allowed[name], value, False)
        except ValueError as exc:
            raise UploadError(f"options: {name}: {exc}") from None
    return given, typed


def resolve_allowed(field: str, given: str, roots: tuple[Path, ...]) -> Path:
    """``given`` as a real path inside one of ``roots`` (links followed first), or :class:`UploadError`."""
    if not roots:
        raise UploadError(f"{field}: this server takes no paths (start it with --allow-path DIR); upload the file")
    try:  # a client's path is taken literally: "~" is not the server user's home
        real = Path(given).resolve(strict=True)
    except (OSError, RuntimeError, ValueError):  # ValueError: a NUL in the path
        real = None
    if real is None or not any(real == root or root in real.parents for root in roots):
        # the same answer for a missing file and one outside the roots: the server's files are not probed
        raise UploadError(f"{field} {given}: not a file under the allowed folders (--allow-path)", 403)
    if not real.is_file():
        raise UploadError(f"{field} {given}: not a file")
    return real


def upload_bytes(incoming: Incoming) -> int:
    """The size of an upload already received (0 for a path), for the disk quota before it is copied."""
    if incoming.stream is None:
        return 0
    at = incoming.stream.tell()
    incoming.stream.seek(0, os.SEEK_END)
    size = incoming.stream.tell()
    incoming.stream.seek(at)
    return size


def store(incoming: Incoming, folder: Path, limit: int) -> Path:
    """Copy an upload into ``folder`` under a server-chosen name; :class:`UploadError` when empty or too big."""
    assert incoming.stream is not None
    partial = folder / f".{incoming.field}.upload"
    written = 0
    with open(partial, "wb") as out:
        while chunk := incoming.stream.read(1 << 20):
            written += len(chunk)
            if written > limit:
                raise UploadError(f"{incoming.field} {incoming.name}: larger than the server's limit of "
                                  f"{limit / (1 << 20):g} MiB (--max-upload-mb)", 413)
            out.write(chunk)
    if written == 0:
        partial.unlink()
        raise UploadError(f"{incoming.field} {incoming.name}: the file is empty")
    with open(partial, "rb") as f:
        head = f.read(16)
    target = folder / (incoming.field + _suffix(incoming.field, head))
    partial.rename(target)
    return target


def _suffix(field: str, head: bytes) -> str:
    """The suffix the pipeline needs to read the file as what its first bytes say it is."""
    if field == "audio":
        return ".wav" if head[:4] == b"RIFF" and head[8:12] == b"WAVE" else ""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return ".png"
    if head.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    if head.startswith(b"BM"):
        return ".bmp"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return ".webp"
    return ""  # a video: OpenCV and ffmpeg find the container from the content


def inference_options(config: ServeConfig, face: Path, audio: Path, outfile: Path,
                      typed: Mapping[str, Any]) -> InferenceOptions:
    """The job's full options: the server's model and cache options plus the request's own."""
    for name, value in typed.items():
        if isinstance(value, Path):
            typed = {**typed, name: resolve_allowed(f"options: {name}", str(value), config.allowed_roots)}
    return InferenceOptions(
        face=face, audio=audio, outfile=outfile, checkpoint_path=Path(config.checkpoint_path).absolute(),
        s3fd_checkpoint=Path(config.s3fd_checkpoint).absolute(), device=config.device, backend=config.backend,
        precision=config.precision, engines_dir=Path(config.engines_dir).absolute(), flavor=config.flavor,
        cache_dir=None if config.cache_dir is None else Path(config.cache_dir).absolute(), **typed)


def probe(options: InferenceOptions, names: Mapping[Path, str]) -> None:
    """What ``infer`` checks before any model loads; a problem is an :class:`UploadError` naming the client's file."""
    from ..session import prepare_job

    try:
        prepare_job(options)
    except Wav2LipTrtError as exc:
        message = str(exc)
        for stored, name in names.items():
            message = message.replace(str(stored), name)
        raise UploadError(message) from None


def remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
