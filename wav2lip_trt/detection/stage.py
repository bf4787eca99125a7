"""The detection pass: raw S3FD boxes for the frames a run needs, before any frame is generated.

A run first settles the raw box (x1, y1, x2, y2, before ``--pads`` and smoothing) of every input
frame it will show, then decodes again to lip-sync. Boxes are four integers a frame, so holding
them all costs nothing, and the split buys the detection cache and box files: a cache hit skips
S3FD *and* the decode that only S3FD needed.

Where the boxes come from, in order: a ``--boxes`` file; the in-process memo of a session (one
face, many audios); the on-disk cache; S3FD. S3FD's post-processing depends on which frames share
a batch (the candidate list of a batch is the union over its images), so detection always batches
frames ``[0, B), [B, 2B), ...`` as the original does, and the cache stores and finds boxes by
exactly those batches. With ``--detect-every K`` the batches are taken over the detected frames
(every K-th and the last); with ``--detect-size N`` the frames are scaled down for S3FD and the
boxes mapped back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, MutableMapping
from typing import Protocol
from dataclasses import dataclass
from pathlib import Path

from ..detect import Box, FaceDetector
from ..dump import IntermediateDump
from ..frame_ops import Frame, FrameOps
from ..stages import StageTimes, batched
from ..video import FaceSource
from .cache import CachedDetections, DetectionCache, DetectionKey, array_to_boxes, boxes_to_array, content_sha256
from .scaled import detect_scale, map_box_back
from .sparse import detected_frames, interpolate_boxes, mark_last

log = logging.getLogger(__name__)

Memo = MutableMapping[str, CachedDetections]


class DetectionSettings(Protocol):
    """What decides a face input's raw boxes: :class:`~wav2lip_trt.options.InferenceOptions` has it all,
    and so does the ``detect`` command's own options."""

    face: Path
    s3fd_checkpoint: Path
    boxes: Path | None
    static: bool
    resize_factor: int
    crop: tuple[int, int, int, int]
    rotate: bool
    face_det_batch_size: int
    detect_every: int
    detect_size: int | None


@dataclass(frozen=True)
class RawDetections:
    """Raw boxes of input frames ``[0, len(boxes))`` and where they came from."""

    boxes: list[Box | None]
    origin: str  # "boxes file", "cache hit", "cache miss", "cache partial" or "detected" (cache off)
    detected: int  # frames S3FD ran on in this pass


class DetectionPass:
    """Settles the raw boxes of a face input for one run; ``memo`` and ``cache`` may be shared by runs."""

    def __init__(self, detector: FaceDetector | None, ops: FrameOps, options: DetectionSettings, source: FaceSource,
                 times: StageTimes, *, runner_label: str, cache: DetectionCache | None = None,
                 memo: Memo | None = None, decode_ahead: int = 16, on_start: Callable[[int | None], None] | None = None,
                 on_frame: Callable[[int], None] | None = None) -> None:
        self.detector, self.ops, self.options, self.source, self.times = detector, ops, options, source, times
        self.runner_label, self.memo, self.decode_ahead = runner_label, memo, decode_ahead
        self.cache = cache if cache is not None and cache.available() else None
        self.on_start, self.on_frame = on_start, on_frame  # progress: frames to settle, then frames settled so far
        info = source.info
        self.scale = detect_scale(info.width, info.height, options.detect_size)
        self.batch = options.face_det_batch_size
        self.every = options.detect_every

    def run(self, limit: int | None, dump: IntermediateDump | None = None) -> RawDetections:
        """Boxes for the first ``limit`` frames (fewer if the input has fewer; None = all of them).

        Progress: ``on_start(frames)`` first (the container's frame count is an estimate), then
        ``on_frame(done)`` after each S3FD batch, and once more with the final count.
        """
        if self.on_start is not None:
            count = self.source.info.frame_count
            self.on_start(count if limit is None else min(limit, count) if count else limit)
        if self.options.boxes is not None:
            result = self._from_file(limit)
        elif self.every == 1:
            result = self._dense(limit)
        else:
            result = self._sparse(limit)
        self._advance(len(result.boxes))
        if dump is not None:
            dump.append("det_boxes", boxes_to_array(result.boxes))
        log.info("face boxes: %s (%d frames, S3FD on %d)", result.origin, len(result.boxes), result.detected)
        return result

    # --- sources of boxes ---------------------------------------------------------------------------

    def _from_file(self, limit: int) -> RawDetections:
        from .boxes_file import read_boxes_for

        static = self.options.static or self.source.kind == "image"
        boxes = read_boxes_for(Path(self.options.boxes), self.source, static=static)
        return RawDetections(boxes if limit is None else boxes[:limit], "boxes file", 0)

    def _dense(self, limit: int) -> RawDetections:
        key = self._key(None)
        entry, origin = self._load(key)
        n = entry.frames_total if limit is None else limit if entry.frames_total is None else min(limit, entry.frames_total)
        spans = [] if n is None else [(start, min(self.batch, n - start)) for start in range(0, n, self.batch)]
        stored = [entry.get(start, length) for start, length in spans]
        if spans and all(d is not None for d in stored):
            return RawDetections([b for d in stored for b in array_to_boxes(d)], "cache hit", 0)
        boxes: list[Box | None] = []
        detected = 0
        for chunk in batched(self._decoded(limit), self.batch):
            start = len(boxes)
            dets = entry.get(start, len(chunk))
            if dets is None:
                dets = boxes_to_array(self._detect(chunk))
                entry.put(start, len(chunk), dets)
                detected += len(chunk)
            self.ops.release(chunk)
            boxes.extend(array_to_boxes(dets))
            self._advance(len(boxes))
        if limit is None or len(boxes) < limit:
            entry.frames_total = len(boxes)  # the input ended: later runs need not decode to learn it
        self._save(key, entry)
        if origin != "detected":
            origin = "cache hit" if detected == 0 else "cache miss" if detected == len(boxes) else "cache partial"
        return RawDetections(boxes, origin, detected)

    def _sparse(self, limit: int) -> RawDetections:
        info = self.source.info
        guess = min(limit or info.frame_count or 0, info.frame_count or limit or 0)
        key = self._key(guess or None)
        entry, origin = self._load(key)
        schedule = detected_frames(guess, self.every)
        spans = [(p, min(self.batch, len(schedule) - p)) for p in range(0, len(schedule), self.batch)]
        stored = [entry.get(p, length) for p, length in spans]
        if spans and all(d is not None for d in stored):
            found = [b for d in stored for b in array_to_boxes(d)]
            return RawDetections(interpolate_boxes(guess, dict(zip(schedule, found))), "cache hit", 0)
        found_at: dict[int, Box | None] = {}
        fresh = CachedDetections()
        picked: list[tuple[int, Frame]] = []  # at most one detection batch of frames is held
        total = 0

        def flush() -> None:
            found = self._detect([frame for _, frame in picked])
            fresh.put(len(found_at), len(picked), boxes_to_array(found))
            found_at.update(zip((i for i, _ in picked), found))
            self.ops.release([frame for _, frame in picked])
            picked.clear()

        for (index, frame), last in mark_last(enumerate(self._decoded(limit))):
            total = index + 1
            if index % self.every == 0 or last:
                picked.append((index, frame))
                if len(picked) == self.batch or last:
                    flush()
                    self._advance(total)
            else:
                self.ops.release([frame])
        self._save(self._key(total) if total else None, fresh)
        if origin != "detected":
            origin = "cache miss"
        return RawDetections(interpolate_boxes(total, found_at) if total else [], origin, len(found_at))

    # --- helpers ------------------------------------------------------------------------------------

    def _advance(self, done: int) -> None:
        if self.on_frame is not None:
            self.on_frame(done)

    def _decoded(self, limit: int) -> Iterator[Frame]:
        return self.ops.frames(limit, self.decode_ahead, self.times)

    def _detect(self, frames: list[Frame]) -> list[Box | None]:
        assert self.detector is not None, "a detection pass without boxes needs S3FD"
        batch = self.ops.stack(frames)
        if self.scale is None:
            return self.detector.detect(batch)
        width, height, fx, fy = self.scale
        found = self.detector.detect(self.ops.scale(batch, width, height))
        info = self.source.info
        return [map_box_back(box, fx, fy, info.width, info.height) for box in found]

    def _key(self, sparse_frames: int | None) -> DetectionKey | None:
        if self.cache is None and self.memo is None:
            return None
        o = self.options
        static = o.static or self.source.kind == "image"
        return DetectionKey(
            face_sha256=content_sha256(Path(o.face)), s3fd_sha256=content_sha256(Path(o.s3fd_checkpoint)),
            resize_factor=o.resize_factor, crop=tuple(o.crop), rotate=o.rotate, static=static,
            face_det_batch_size=o.face_det_batch_size, runner=self.runner_label, detect_every=o.detect_every,
            detect_size=o.detect_size if self.scale is not None else None,
            sparse_frames=sparse_frames if o.detect_every > 1 else None,
        )

    def _load(self, key: DetectionKey | None) -> tuple[CachedDetections, str]:
        if key is None:
            return CachedDetections(), "detected"
        digest = key.digest()
        if self.memo is not None and digest in self.memo:
            return self.memo[digest], "cache"
        entry = self.cache.load(key) if self.cache is not None else None
        return (entry if entry is not None else CachedDetections()), ("cache" if self.cache is not None else "detected")

    def _save(self, key: DetectionKey | None, entry: CachedDetections) -> None:
        if key is None:
            return
        if self.memo is not None:
            self.memo[key.digest()] = entry
        if self.cache is not None:
            self.cache.store(key, entry)

