"""The original ``inference.py`` algorithm, structure and all, for comparison.

Everything the original does that the streaming pipeline avoids is kept on purpose: every frame
in a Python list, detection post-processing in a Python loop over candidates, one generator batch
of full frames at a time, an MPEG-4 AVI written by OpenCV and re-encoded by a second ffmpeg call.
``bench`` runs it as the "reference" mode and the tests use it as an independent statement of the
spec (it shares only the networks, the audio front end and the file readers with the pipeline).
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .audio import load_audio, melspectrogram
from .checkpoints import load_s3fd, load_wav2lip
from .errors import NoFaceError
from .ffmpeg import find_ffmpeg
from .options import InferenceOptions
from .video import FaceSource, FrameTransform

MEL_STEP = 16
IMG_SIZE = 96


@dataclass
class ReferenceOutputs:
    """What the original computes, kept in memory (short clips only)."""

    mel: np.ndarray
    mel_chunks: list[np.ndarray]
    det_boxes: list[tuple[int, int, int, int]] = field(default_factory=list)  # x1, y1, x2, y2 per detected frame
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)  # y1, y2, x1, x2 per output frame
    preds: list[np.ndarray] = field(default_factory=list)  # (3, 96, 96) float32 per output frame
    frames: list[np.ndarray] = field(default_factory=list)  # final BGR frames


def read_frames(options: InferenceOptions) -> tuple[list[np.ndarray], float]:
    transform = FrameTransform(options.resize_factor, options.rotate, tuple(options.crop))
    source = FaceSource(options.face, fps=options.fps, transform=transform)
    return list(source.frames()), source.info.fps


def mel_chunk_list(mel: np.ndarray, fps: float) -> list[np.ndarray]:
    chunks = []
    mel_idx_multiplier = 80.0 / fps
    i = 0
    while True:
        start_idx = int(i * mel_idx_multiplier)
        if start_idx + MEL_STEP > len(mel[0]):
            chunks.append(mel[:, len(mel[0]) - MEL_STEP :])
            break
        chunks.append(mel[:, start_idx : start_idx + MEL_STEP])
        i += 1
    return chunks


def _decode(loc: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    boxes = torch.cat(
        (priors[:, :, :2] + loc[:, :, :2] * 0.1 * priors[:, :, 2:], priors[:, :, 2:] * torch.exp(loc[:, :, 2:] * 0.2)), 2
    )
    boxes[:, :, :2] -= boxes[:, :, 2:] / 2
    boxes[:, :, 2:] += boxes[:, :, :2]
    return boxes


def batch_detect(net: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    imgs = images - np.array([104, 117, 123])
    imgs = torch.from_numpy(imgs.transpose(0, 3, 1, 2)).float()
    batch = imgs.shape[0]
    with torch.no_grad():
        olist = list(net(imgs))
    for i in range(len(olist) // 2):
        olist[i * 2] = F.softmax(olist[i * 2], dim=1)
    bboxlist = []
    for i in range(len(olist) // 2):
        ocls, oreg = olist[i * 2], olist[i * 2 + 1]
        stride = 2 ** (i + 2)
        for _, hindex, windex in zip(*np.where(ocls[:, 1, :, :].numpy() > 0.05)):
            axc, ayc = stride / 2 + windex * stride, stride / 2 + hindex * stride
            score = ocls[:, 1, hindex, windex]
            loc = oreg[:, :, hindex, windex].contiguous().view(batch, 1, 4)
            priors = torch.Tensor([[axc / 1.0, ayc / 1.0, stride * 4 / 1.0, stride * 4 / 1.0]]).view(1, 1, 4)
            box = _decode(loc, priors)[:, 0] * 1.0
            bboxlist.append(torch.cat([box, score.unsqueeze(1)], 1).numpy())
    out = np.array(bboxlist)
    return out if len(out) else np.zeros((1, batch, 5))


def nms(dets: np.ndarray, thresh: float) -> list[int]:
    if len(dets) == 0:
        return []
    x1, y1, x2, y2, scores = dets[:, 0], dets[:, 1], dets[:, 2], dets[:, 3], dets[:, 4]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        xx1, yy1 = np.maximum(x1[i], x1[order[1:]]), np.maximum(y1[i], y1[order[1:]])
        xx2, yy2 = np.minimum(x2[i], x2[order[1:]]), np.minimum(y2[i], y2[order[1:]])
        w, h = np.maximum(0.0, xx2 - xx1 + 1), np.maximum(0.0, yy2 - yy1 + 1)
        ovr = w * h / (areas[i] + areas[order[1:]] - w * h)
        order = order[np.where(ovr <= thresh)[0] + 1]
    return keep


def detect_batch(net: torch.nn.Module, images: np.ndarray) -> list[tuple[int, int, int, int] | None]:
    bboxlists = batch_detect(net, images[..., ::-1].copy())
    results: list[tuple[int, int, int, int] | None] = []
    for i in range(bboxlists.shape[1]):
        dets = bboxlists[nms(bboxlists[:, i, :], 0.3), i, :]
        dets = [d for d in dets if d[-1] > 0.5]
        if not dets:
            results.append(None)
            continue
        d = np.clip(dets[0], 0, None)
        x1, y1, x2, y2 = map(int, d[:-1])
        results.append((x1, y1, x2, y2))
    return results


def smoothened(boxes: np.ndarray, T: int = 5) -> np.ndarray:
    for i in range(len(boxes)):
        window = boxes[len(boxes) - T :] if i + T > len(boxes) else boxes[i : i + T]
        boxes[i] = np.mean(window, axis=0)
    return boxes


def face_detect(net: torch.nn.Module, images: list[np.ndarray], options: InferenceOptions, out: ReferenceOutputs):
    predictions: list[tuple[int, int, int, int] | None] = []
    size = options.face_det_batch_size
    for i in range(0, len(images), size):
        predictions.extend(detect_batch(net, np.array(images[i : i + size])))
    results = []
    pady1, pady2, padx1, padx2 = options.pads
    for index, (rect, image) in enumerate(zip(predictions, images)):
        if rect is None:
            raise NoFaceError(f"reference: face not detected in frame {index}")
        out.det_boxes.append(rect)
        y1 = max(0, rect[1] - pady1)
        y2 = min(image.shape[0], rect[3] + pady2)
        x1 = max(0, rect[0] - padx1)
        x2 = min(image.shape[1], rect[2] + padx2)
        results.append([x1, y1, x2, y2])
    boxes = np.array(results)
    if not options.nosmooth:
        boxes = smoothened(boxes, T=5)
    return [[image[y1:y2, x1:x2], (y1, y2, x1, x2)] for image, (x1, y1, x2, y2) in zip(images, boxes)]


def run_reference(options: InferenceOptions, *, write_video: bool = True) -> ReferenceOutputs:
    """Run the original algorithm; with ``write_video`` also produce the AVI + mux output file."""
    frames, fps = read_frames(options)
    static = options.static or FaceSource(options.face, fps=options.fps).kind == "image"
    mel = melspectrogram(load_audio(options.audio, ffmpeg=options.ffmpeg))
    out = ReferenceOutputs(mel=mel, mel_chunks=mel_chunk_list(mel, fps))
    frames = frames[: len(out.mel_chunks)]

    if options.box[0] == -1:
        net = load_s3fd(options.s3fd_checkpoint)
        face_det_results = face_detect(net, [frames[0]] if static else frames, options, out)
        del net
    else:
        y1, y2, x1, x2 = options.box
        face_det_results = [[f[y1:y2, x1:x2], (y1, y2, x1, x2)] for f in frames]

    model = load_wav2lip(options.checkpoint_path)
    frame_h, frame_w = frames[0].shape[:2]
    with tempfile.TemporaryDirectory() as tmp:
        avi = str(Path(tmp) / "result.avi")
        writer = cv2.VideoWriter(avi, cv2.VideoWriter_fourcc(*"DIVX"), fps, (frame_w, frame_h)) if write_video else None
        batch: list[tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int, int, int]]] = []
        for i, m in enumerate(out.mel_chunks):
            idx = 0 if static else i % len(frames)
            face, coords = face_det_results[idx]
            batch.append((cv2.resize(face, (IMG_SIZE, IMG_SIZE)), m, frames[idx].copy(), coords))
            if len(batch) >= options.wav2lip_batch_size or i == len(out.mel_chunks) - 1:
                _generate(model, batch, out, writer)
                batch = []
        if writer is not None:
            writer.release()
            cmd = [find_ffmpeg(options.ffmpeg), "-y", "-loglevel", "error", "-i", str(options.audio), "-i", avi,
                   "-strict", "-2", "-q:v", "1", str(options.outfile)]
            subprocess.run(cmd, check=True)
    return out


def _generate(model: torch.nn.Module, batch, out: ReferenceOutputs, writer) -> None:
    img_batch = np.asarray([b[0] for b in batch])
    mel_batch = np.asarray([b[1] for b in batch])
    img_masked = img_batch.copy()
    img_masked[:, IMG_SIZE // 2 :] = 0
    img_batch = np.concatenate((img_masked, img_batch), axis=3) / 255.0
    mel_batch = np.reshape(mel_batch, [len(mel_batch), mel_batch.shape[1], mel_batch.shape[2], 1])
    img_t = torch.FloatTensor(np.transpose(img_batch, (0, 3, 1, 2)))
    mel_t = torch.FloatTensor(np.transpose(mel_batch, (0, 3, 1, 2)))
    with torch.no_grad():
        pred = model(mel_t, img_t)
    pred_np = pred.numpy()
    pred_img = pred_np.transpose(0, 2, 3, 1) * 255.0
    for p, raw, (_, _, f, c) in zip(pred_img, pred_np, batch):
        y1, y2, x1, x2 = c
        p = cv2.resize(p.astype(np.uint8), (x2 - x1, y2 - y1))
        f[y1:y2, x1:x2] = p
        out.boxes.append(tuple(int(v) for v in c))
        out.preds.append(raw)
        out.frames.append(f)
        if writer is not None:
            writer.write(f)
