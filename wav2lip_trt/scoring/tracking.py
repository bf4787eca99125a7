"""Face tracks for LSE, following syncnet_python's ``run_pipeline.py`` with this project's S3FD.

Steps, as upstream: detect every face in every frame at 1/4 scale (score > 0.9, then NMS at IoU
0.1), link detections frame to frame (IoU > 0.5, at most 25 missed frames), keep tracks longer than
``min_track`` frames whose mean box side exceeds ``min_face_size`` pixels, fill gaps by linear
interpolation, median-filter the crop centre and size (13 taps, zero-padded), and cut each
frame's 224x224 crop from the frame padded with grey 110, 1.4x the box half-size around it.

Where this departs from upstream, and why:
* Detector: this project's S3FD (Wav2Lip's ``s3fd.pth``, its preprocessing, decoding and first
  NMS) instead of syncnet_python's ``sfd_face.pth`` port: one detector, one set of weights.
* No shot detection (PySceneDetect): the whole video is one shot. A cut inside a track still
  ends it when the boxes stop overlapping; only a cut between two overlapping faces is missed.
* Frames are decoded once to raw BGR at 25 fps (upstream: re-encode to an AVI at q 2, then dump
  q 2 JPEGs), and crops go straight to SyncNet (upstream: written as XVID, then dumped to JPEG
  again by the scorer): no lossy step is added. ``--crops`` on upstream's crop clips is the way
  to get the authors' exact numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from ..detect import MIN_FRAME_SIDE, detections_per_image, preprocess
from ..errors import InputError
from .lse import LIP_SIZE, zero_padded_medfilt

IOU_THRESHOLD = 0.5  # linking: consecutive detections of one track overlap more than this
FINAL_NMS = 0.1  # syncnet_python's NMS over the confident faces
SMOOTH_KERNEL = 13  # median filter over the crop centre and size
PAD_VALUE = 110  # grey the frame is padded with before cropping


@dataclass(frozen=True)
class TrackOptions:
    """run_pipeline.py's options, same defaults."""

    facedet_scale: float = 0.25  # frames are shrunk by this before detection
    conf_th: float = 0.9  # minimum face score
    min_track: int = 100  # a track needs more detections than this (4 s at 25 fps)
    num_failed_det: int = 25  # frames a track may go without a detection
    min_face_size: float = 100.0  # pixels: mean box width or height must exceed it
    crop_scale: float = 0.4  # crop margin around the box half-size


@dataclass(frozen=True)
class FaceTrack:
    """One face followed through consecutive frames (indices in the 25 fps video)."""

    frames: np.ndarray  # (L,) int64: first..last, consecutive
    boxes: np.ndarray  # (L, 4) float64 x1, y1, x2, y2, interpolated between detections
    size: np.ndarray  # (L,) float64 smoothed half-size of the crop box
    centre_x: np.ndarray  # (L,) float64 smoothed
    centre_y: np.ndarray  # (L,) float64 smoothed

    @property
    def start_frame(self) -> int:
        return int(self.frames[0])

    @property
    def end_frame(self) -> int:
        return int(self.frames[-1])


def nms_no_plus_one(dets: np.ndarray, thresh: float) -> np.ndarray:
    """syncnet_python's ``nms_``: greedy NMS, areas without the +1 pixel, keeps IoU <= ``thresh``."""
    if len(dets) == 0:
        return np.zeros(0, dtype=np.intp)
    x1, y1, x2, y2, scores = (dets[:, j] for j in range(5))
    areas = (x2 - x1) * (y2 - y1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        order = rest[inter / (areas[i] + areas[rest] - inter) <= thresh]
    return np.array(keep, dtype=np.intp)


def scaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """OpenCV's ``dsize`` for ``fx = fy = scale``: each side rounded; InputError under S3FD's 32 px."""
    w, h = round(width * scale), round(height * scale)
    if min(w, h) < MIN_FRAME_SIDE:
        raise InputError(
            f"a {width}x{height} video shrinks to {w}x{h} for face detection (--facedet-scale {scale:g}), "
            f"below S3FD's {MIN_FRAME_SIDE} pixels; use a larger --facedet-scale"
        )
    return w, h


@torch.no_grad()
def detect_all_faces(s3fd: torch.nn.Module, frames: np.ndarray, options: TrackOptions,
                     device: torch.device | str = "cpu") -> list[np.ndarray]:
    """Every confident face per frame: (k, 5) float64 x1, y1, x2, y2, score in full-frame pixels.

    frames: (B, H, W, 3) uint8 BGR, all one size.
    """
    height, width = frames.shape[1:3]
    w, h = scaled_size(width, height, options.facedet_scale)
    small = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR) for f in frames])
    outputs = s3fd(preprocess(small).to(device))
    per_image = detections_per_image([o.float().cpu() for o in outputs])
    scale = np.array([width / w, height / h, width / w, height / h, 1.0])
    result = []
    for dets in per_image:
        dets = dets[dets[:, 4] > options.conf_th].astype(np.float64)
        dets = dets[nms_no_plus_one(dets, FINAL_NMS)]
        result.append(dets * scale)
    return result


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """run_pipeline's ``bb_intersection_over_union`` (no +1 pixel)."""
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    return inter / float(area_a + area_b - inter)


def link_tracks(detections: Sequence[np.ndarray], options: TrackOptions) -> list[tuple[np.ndarray, np.ndarray]]:
    """run_pipeline's ``track_shot`` on one shot: (frame numbers, boxes) of each track kept.

    Faithful to its list handling: a face taken by a track is removed from its frame's list while
    that list is being walked, so the face after it in the same frame is skipped in that pass.
    """
    remaining: list[list[tuple[int, np.ndarray]]] = [
        [(f, det[:4].copy()) for det in dets] for f, dets in enumerate(detections)
    ]
    tracks = []
    while True:
        track: list[tuple[int, np.ndarray]] = []
        for framefaces in remaining:
            k = 0
            while k < len(framefaces):
                frame, box = framefaces[k]
                if not track:
                    track.append(framefaces.pop(k))
                    k += 1  # the list shifted left: the walk skips the next face, as upstream's does
                    continue
                if frame - track[-1][0] <= options.num_failed_det:
                    if iou(box, track[-1][1]) > IOU_THRESHOLD:
                        track.append(framefaces.pop(k))
                        k += 1
                        continue
                    k += 1
                else:
                    break
        if not track:
            return tracks
        if len(track) <= options.min_track:
            continue
        framenum = np.array([f for f, _ in track])
        boxes = np.array([b for _, b in track], dtype=np.float64)
        frame_i = np.arange(framenum[0], framenum[-1] + 1)
        boxes_i = np.stack([np.interp(frame_i, framenum, boxes[:, j]) for j in range(4)], axis=1)
        if max(np.mean(boxes_i[:, 2] - boxes_i[:, 0]), np.mean(boxes_i[:, 3] - boxes_i[:, 1])) > options.min_face_size:
            tracks.append((frame_i, boxes_i))


def smooth_track(frames: np.ndarray, boxes: np.ndarray) -> FaceTrack:
    """run_pipeline's ``crop_video`` geometry: half-size and centre per frame, 13-tap zero-padded median."""
    size = np.maximum(boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    return FaceTrack(frames=frames, boxes=boxes, size=zero_padded_medfilt(size, SMOOTH_KERNEL),
                     centre_x=zero_padded_medfilt(cx, SMOOTH_KERNEL), centre_y=zero_padded_medfilt(cy, SMOOTH_KERNEL))


def crop_face(frame: np.ndarray, size: float, cx: float, cy: float, crop_scale: float) -> np.ndarray:
    """The 224x224 crop ``crop_video`` writes for one frame (BGR uint8), same padding and truncations."""
    pad = int(size * (1 + 2 * crop_scale))
    padded = np.pad(frame, ((pad, pad), (pad, pad), (0, 0)), "constant", constant_values=(PAD_VALUE, PAD_VALUE))
    my, mx = cy + pad, cx + pad
    face = padded[int(my - size): int(my + size * (1 + 2 * crop_scale)),
                  int(mx - size * (1 + crop_scale)): int(mx + size * (1 + crop_scale))]
    if face.size == 0:
        face = np.full((LIP_SIZE, LIP_SIZE, 3), PAD_VALUE, dtype=np.uint8)
    return cv2.resize(face, (LIP_SIZE, LIP_SIZE))


def expert_face(frame: np.ndarray, box: np.ndarray, side: int = 96) -> np.ndarray:
    """The detected box itself (as Wav2Lip's preprocessing cut training faces), resized to 96x96."""
    height, width = frame.shape[:2]
    x1, y1 = max(0, int(box[0])), max(0, int(box[1]))
    x2, y2 = min(width, int(math.ceil(box[2]))), min(height, int(math.ceil(box[3])))
    face = frame[y1:y2, x1:x2]
    if face.size == 0:
        face = frame
    return cv2.resize(face, (side, side))


def track_crops(frames: Iterator[np.ndarray], track: FaceTrack, crop_scale: float
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(224x224 LSE crop, 96x96 expert face) for each frame of ``track``, from the video's frames."""
    first, last = track.start_frame, track.end_frame
    for index, frame in enumerate(frames):
        if index < first:
            continue
        if index > last:
            return
        k = index - first
        yield (crop_face(frame, track.size[k], track.centre_x[k], track.centre_y[k], crop_scale),
               expert_face(frame, track.boxes[k]))
