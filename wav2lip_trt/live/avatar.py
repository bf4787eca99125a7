"""An avatar: everything per frame that does not depend on the audio, prepared once and kept on disk.

A live stream cannot wait for a detection pass, and each frame's face box does not depend on what
is said. :func:`prepare_avatar` runs the pipeline's own front half on a face video or image --
decode, the detection pass (``--boxes`` file, session memo, disk cache or S3FD, with
``--detect-every``/``--detect-size``), ``--pads``, the missing-face policy and forward smoothing
(:class:`wav2lip_trt.pipeline.Detection`) -- and stores, per loop position, the frame, its box and
the generator's 96x96 face crop (its reference half as is, its masked half rows 48..95 zeroed when
the batch is built). :func:`load_avatar` checks and maps it back in milliseconds.

Loop positions: ``forward`` plays frames 0..n-1 and starts again (the original's ``i % n``);
``pingpong`` plays 0..n-1 then n-1..0, boxes smoothed over that sequence, so it equals ``infer`` on
a video made of the frames forwards then backwards. A still image (or ``static``) has one position.

On disk (a folder, written to a temporary sibling and renamed when complete)::

    manifest.json   format, version, source, fps, size, loop, options, checkpoints, sha256 of each file
    frames.u8       (n, H, W, 3) uint8 BGR, the distinct frames, raw: written as they are decoded (a long
                    video never sits in memory) and memory-mapped on load
    order.npy       (L,) int32, loop position -> frame
    boxes.npy       (L, 4) int64 (y1, y2, x1, x2) per position; -1 = no face, the frame passes unchanged
    faces.npy       (L, 96, 96, 3) uint8, the generator's face input per position

The boxes are what ``infer`` uses when the audio covers the whole video at least once: infer smooths
over the frames it shows, so with shorter audio its last four boxes can differ.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from ..detection.cache import content_sha256
from ..errors import InputError
from ..faces import IMG_SIZE, Box, crop_faces
from ..files import sha256_file
from ..stages import StageTimes

if TYPE_CHECKING:
    from ..options import InferenceOptions
    from ..session import Session

log = logging.getLogger(__name__)

FORMAT = "wav2lip-trt-avatar"
VERSION = 1
LOOPS = ("forward", "pingpong")
FRAMES = "frames.u8"
FILES = (FRAMES, "order.npy", "boxes.npy", "faces.npy")
AVATAR_OPTIONS = ("static", "fps", "pads", "face_det_batch_size", "resize_factor", "crop", "box", "rotate", "nosmooth",
                  "on_missing_face", "boxes", "detect_every", "detect_size", "cache_dir", "no_cache")
"""The per-call options of ``infer`` that decide an avatar (the rest concern audio and output)."""


class AvatarError(InputError):
    """An avatar folder that is missing, damaged, or made for other networks."""


@dataclass(frozen=True)
class Avatar:
    """Frames, boxes and face crops per loop position; output frame i shows position ``i % len(self)``."""

    frames: np.ndarray  # (n, H, W, 3) uint8, read-only (memory-mapped when loaded)
    order: np.ndarray  # (L,) frame per position
    boxes: np.ndarray  # (L, 4) int64 (y1, y2, x1, x2), -1 = no face
    faces: np.ndarray  # (L, 96, 96, 3) uint8
    fps: float
    loop: str
    manifest: dict[str, Any]
    path: Path | None = None

    def __len__(self) -> int:
        return int(self.order.shape[0])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    def position(self, index: int) -> int:
        return index % len(self)

    def frame(self, index: int) -> np.ndarray:
        """A private, writable copy of output frame ``index``'s picture (paste-back writes into it)."""
        return np.array(self.picture(index))

    def picture(self, index: int) -> np.ndarray:
        """Output frame ``index``'s picture as stored: read-only, no copy (:meth:`frame` gives one to paste into)."""
        return self.frames[self.order[self.position(index)]]

    def box(self, index: int) -> Box | None:
        row = self.boxes[self.position(index)]
        return None if row[0] < 0 else (int(row[0]), int(row[1]), int(row[2]), int(row[3]))

    def check_checkpoint(self, checkpoint: Path) -> None:
        """One clear error if this avatar was prepared for another generator checkpoint."""
        mine = self.manifest["checkpoint"]
        theirs = content_sha256(Path(checkpoint))
        if mine["sha256"] != theirs:
            where = self.path if self.path is not None else "the avatar"
            raise AvatarError(f"{where} was prepared with checkpoint {mine['name']} (sha256 {mine['sha256'][:12]}...), "
                              f"this session runs {Path(checkpoint).name} (sha256 {theirs[:12]}...); prepare it again "
                              "with `wav2lip-trt avatar`")


def make_avatar(session: Session, options: InferenceOptions, out: Path | None, *, loop: str = "forward") -> Avatar:
    """:func:`prepare_avatar`, in memory (``out`` None) or into the folder ``out`` (frames spilled as decoded)."""
    if out is None:
        return prepare_avatar(session, options, loop=loop)
    tmp = staging_dir(Path(out))
    try:
        avatar = prepare_avatar(session, options, loop=loop, spill=tmp / FRAMES)
        return save_avatar(avatar, out, staged=tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def prepare_avatar(session: Session, options: InferenceOptions, *, loop: str = "forward",
                   times: StageTimes | None = None, spill: Path | None = None) -> Avatar:
    """Decode ``options.face``, settle every frame's box as ``infer`` would, and crop the faces.

    ``spill``: write the decoded frames to this raw file and map them from there, instead of memory.
    """
    from ..execution import plan_batches
    from ..frame_ops import frame_ops_for
    from ..pipeline import Detection

    if loop not in LOOPS:
        raise InputError(f"--loop must be one of {', '.join(LOOPS)}, got {loop!r}")
    times = times if times is not None else StageTimes()
    options.validate()
    session._check(options)
    source = options.check_face_source()
    static = options.static or source.kind == "image"
    info = source.info
    plan = plan_batches(info.width, info.height, budget_mb=options.frame_memory,
                        wav2lip_batch_size=options.wav2lip_batch_size, face_det_batch_size=options.face_det_batch_size)
    ops = frame_ops_for(session.context, None, source, decoder=options.decoder, batch=plan.decode_ahead,  # type: ignore[arg-type]
                        batch_frames=plan.largest_batch, buffers=plan.buffers)
    frames = _collect((ops.to_host(f) for f in ops.frames(1 if static else None, plan.decode_ahead, times)), spill)
    n = frames.shape[0]
    order = np.arange(n, dtype=np.int32)
    if loop == "pingpong" and not static:
        order = np.concatenate((order, order[::-1]))
    if options.uses_fixed_box:
        boxes: list[Box | None] = [tuple(options.box)] * len(order)  # type: ignore[list-item]
        origin = "fixed box"
    else:
        raw = session._raw_boxes(options, source, ops, times, plan, None, n)
        if len(raw.boxes) < n:
            raise InputError(f"{options.boxes or source.path}: {len(raw.boxes)} boxes for {n} frames")
        per_position = [raw.boxes[int(j)] for j in order]
        detection = Detection(per_position, options, source)
        boxes = [box for _, _, box in detection.boxes(frames[j] for j in order)]
        origin = raw.origin
    box_rows = np.array([b if b is not None else (-1, -1, -1, -1) for b in boxes], dtype=np.int64).reshape(-1, 4)
    faces = np.zeros((len(order), IMG_SIZE, IMG_SIZE, 3), dtype=np.uint8)
    faced = [k for k, b in enumerate(boxes) if b is not None]
    if faced:
        with times.stage("crop", len(faced)):
            faces[faced] = crop_faces([frames[order[k]] for k in faced], [boxes[k] for k in faced])  # type: ignore[misc]
    checkpoint = Path(options.checkpoint_path)
    detector = Path(options.s3fd_checkpoint) if options.needs_detector else None
    manifest = {
        "format": FORMAT, "version": VERSION, "face": str(options.face), "kind": info.kind, "fps": info.fps,
        "width": info.width, "height": info.height, "frames": n, "positions": len(order), "loop": loop,
        "static": static, "detection": origin,
        "options": {name: _jsonable(getattr(options, name)) for name in AVATAR_OPTIONS},
        "checkpoint": {"name": checkpoint.name, "sha256": content_sha256(checkpoint)},
        "detector": None if detector is None else {"name": detector.name, "sha256": content_sha256(detector)},
    }
    log.info("avatar of %s: %d frames, %d loop positions (%s), boxes: %s", options.face, n, len(order), loop, origin)
    return Avatar(frames, order, box_rows, faces, info.fps, loop, manifest)


def _collect(frames: Iterator[np.ndarray], spill: Path | None) -> np.ndarray:
    if spill is None:
        return np.stack(list(frames))
    count, shape = 0, None
    with open(spill, "wb") as f:
        for frame in frames:
            frame = np.ascontiguousarray(frame, dtype=np.uint8)
            shape = frame.shape
            f.write(frame.data)
            count += 1
    if shape is None:
        raise InputError(f"{spill}: no frames were decoded")
    return np.memmap(spill, dtype=np.uint8, mode="r", shape=(count, *shape))


def staging_dir(folder: Path) -> Path:
    """A new hidden folder beside ``folder`` to build an avatar in (``folder`` itself: new, empty or an avatar)."""
    if folder.exists() and not (folder.is_dir() and (not any(folder.iterdir()) or (folder / "manifest.json").is_file())):
        raise InputError(f"--out {folder} exists and is not an avatar folder; choose a new folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.partial-{time.time_ns()}"
    tmp.mkdir()
    return tmp


def save_avatar(avatar: Avatar, folder: str | Path, *, staged: Path | None = None) -> Avatar:
    """Write ``avatar`` to ``folder`` (replacing an avatar there; any other existing folder is refused).

    ``staged``: the :func:`staging_dir` the frames were spilled into already.
    """
    folder = Path(folder)
    tmp = staged if staged is not None else staging_dir(folder)
    try:
        if not (tmp / FRAMES).exists():
            np.ascontiguousarray(avatar.frames, dtype=np.uint8).tofile(tmp / FRAMES)
        for name, array in (("order.npy", avatar.order), ("boxes.npy", avatar.boxes), ("faces.npy", avatar.faces)):
            np.save(tmp / name, np.ascontiguousarray(array), allow_pickle=False)
        files = {name: {"bytes": (tmp / name).stat().st_size, "sha256": sha256_file(tmp / name)} for name in FILES}
        manifest = dict(avatar.manifest, files=files)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if folder.exists():
            old = folder.parent / f".{folder.name}.old-{time.time_ns()}"
            folder.rename(old)
            tmp.rename(folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_avatar(folder, verify=False)


def load_avatar(folder: str | Path, *, verify: bool = True) -> Avatar:
    """Map an avatar folder back; any damage is one :class:`AvatarError` naming the folder and the problem.

    ``verify`` checks each file's sha256 (about 1 s per GB of frames); sizes and shapes are always checked.
    """
    folder = Path(folder)
    manifest_path = folder / "manifest.json"
    if not folder.is_dir():
        raise AvatarError(f"avatar folder not found: {folder}")
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise AvatarError(f"{folder} is not an avatar folder (no manifest.json); make one with `wav2lip-trt avatar`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AvatarError(f"{manifest_path} is damaged: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise AvatarError(f"{manifest_path} does not describe a wav2lip-trt avatar")
    if manifest.get("version") != VERSION:
        raise AvatarError(f"{folder}: avatar format version {manifest.get('version')}, this version reads {VERSION}; "
                          "prepare it again")
    arrays = {}
    try:
        for name in FILES:
            path, expected = folder / name, manifest["files"][name]
            if not path.is_file():
                raise AvatarError(f"{folder}: {name} is missing")
            if path.stat().st_size != expected["bytes"]:
                raise AvatarError(f"{folder}: {name} is {path.stat().st_size} bytes, the manifest says {expected['bytes']}")
            if verify and sha256_file(path) != expected["sha256"]:
                raise AvatarError(f"{folder}: {name} does not match its sha256 in manifest.json (the file is damaged)")
            if name != FRAMES:
                arrays[name] = np.load(path, allow_pickle=False)
        n, positions = manifest["frames"], manifest["positions"]
        shape = (n, manifest["height"], manifest["width"], 3)
        if folder.joinpath(FRAMES).stat().st_size != int(np.prod(shape)) or n < 1:
            raise AvatarError(f"{folder}: {FRAMES} does not hold {n} frames of {shape[2]}x{shape[1]}")
        arrays[FRAMES] = np.memmap(folder / FRAMES, dtype=np.uint8, mode="r", shape=shape)
        frames, order, boxes, faces = (arrays[name] for name in FILES)
        shapes_ok = (frames.shape == (n, manifest["height"], manifest["width"], 3) and frames.dtype == np.uint8
                     and order.shape == (positions,) and boxes.shape == (positions, 4)
                     and faces.shape == (positions, IMG_SIZE, IMG_SIZE, 3) and positions > 0
                     and int(order.min()) >= 0 and int(order.max()) < n)
        fps, loop = float(manifest["fps"]), manifest["loop"]
        manifest["checkpoint"]["sha256"]
    except AvatarError:
        raise
    except (KeyError, TypeError, ValueError, OSError) as exc:
        raise AvatarError(f"{folder} is damaged: {type(exc).__name__}: {exc}") from None
    if not shapes_ok:
        raise AvatarError(f"{folder}: the arrays do not have the shapes manifest.json gives (the folder is damaged)")
    return Avatar(frames, order, boxes, faces, fps, loop, manifest, folder)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value
