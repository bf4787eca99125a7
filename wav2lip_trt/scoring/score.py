"""``score_video``: LSE-D / LSE-C (and optionally the expert and the quality discriminator) for a video.

Two routes. ``crops=True``: the video already is a face crop, scored exactly as the Wav2Lip authors'
``calculate_scores_real_videos.py`` scores one crop clip (same ffmpeg commands, JPEG round trip,
224x224 resize, MFCC, batch 20, vshift 15). Otherwise faces are found and tracked first
(:mod:`wav2lip_trt.scoring.tracking`), and every face track is scored like one crop clip.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from ..audio import MelChunks, melspectrogram
from ..backends import RunnerRequest, resolve_device
from ..errors import InputError, NoFaceError
from ..execution.handoff import on_stream
from ..ffmpeg import find_ffmpeg
from ..options import BACKEND_CHOICES, PRECISION_CHOICES
from .expert import FACE_SIZE
from .lse import (BATCH_SIZE, SAMPLES_PER_FRAME, VSHIFT, LseResult, audio_features,
                  check_window_count, lip_features, lse_scores)
from .media import (decode_frames, extract_audio_int16, extract_jpeg_frames, lse_mfcc, read_jpeg_frames,
                    read_lse_frames, video_size)
from .networks import ScoringNetworks, load_scoring_networks
from .online import ExpertReport, OnlineScorer, QualityReport
from .tracking import FaceTrack, TrackOptions, detect_all_faces, link_tracks, smooth_track, track_crops

log = logging.getLogger(__name__)

LSE_FPS = 25.0  # the frame rate LSE assumes (640 samples per frame at 16 kHz)
EXPERT_CHUNK = 64  # faces handed to the expert/discriminator at a time
DEFAULT_SYNCNET = Path("checkpoints/syncnet_v2.model")
DEFAULT_S3FD = Path("checkpoints/s3fd.pth")


@dataclass(frozen=True)
class ScoreOptions:
    """What to score and with which networks; checked by :meth:`check` before any model loads."""

    video: Path  # the clip to score; its own audio track unless ``audio`` is given
    audio: Path | None = None  # another audio source (anything ffmpeg decodes)
    syncnet_checkpoint: Path = DEFAULT_SYNCNET  # syncnet_python's syncnet_v2.model (LSE)
    expert_checkpoint: Path | None = None  # Wav2Lip's lipsync_expert.pth (optional)
    disc_checkpoint: Path | None = None  # Wav2Lip's visual quality discriminator (optional)
    crops: bool = False  # True: the video is a face crop, scored as is (the exact path)
    s3fd_checkpoint: Path = DEFAULT_S3FD  # face detector for the tracked path
    batch_size: int = BATCH_SIZE  # LSE windows per forward
    vshift: int = VSHIFT  # frames of audio-video shift searched either way
    detect_batch_size: int = 16  # frames per S3FD forward (tracked path)
    device: str = "cpu"  # cpu, cuda or auto
    backend: str = "torch"  # torch, onnxruntime (exported first), tensorrt (engines from build-engines) or auto
    precision: str = "auto"  # auto = FP32 (the metric's definition), FP16 for the tensorrt backend's engines
    engines_dir: Path = Path("engines")  # the tensorrt backend's engines
    flavor: str = "auto"  # TensorRT flavour
    ffmpeg: str | None = None  # ffmpeg executable [imageio-ffmpeg's]
    tracking: TrackOptions = field(default_factory=TrackOptions)

    def check(self) -> None:
        """Raise :class:`InputError` for an unusable option, naming it."""
        if self.backend not in BACKEND_CHOICES:
            raise InputError(f"--backend must be one of {', '.join(BACKEND_CHOICES)}, got {self.backend!r}")
        if self.precision not in PRECISION_CHOICES:
            raise InputError(f"--precision must be one of {', '.join(PRECISION_CHOICES)}, got {self.precision!r}")
        if self.batch_size < 1:
            raise InputError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.vshift < 1:
            raise InputError(f"--vshift must be at least 1, got {self.vshift}")
        if self.detect_batch_size < 1:
            raise InputError(f"--detect-batch-size must be at least 1, got {self.detect_batch_size}")
        t = self.tracking
        if not 0 < t.facedet_scale <= 4:
            raise InputError(f"--facedet-scale must be in (0, 4], got {t.facedet_scale:g}")
        if t.min_track < 0 or t.num_failed_det < 0 or t.min_face_size < 0 or t.crop_scale < 0:
            raise InputError("--min-track, --num-failed-det, --min-face-size and --crop-scale must not be negative")
        for label, path in (("--video", self.video), ("--audio", self.audio)):
            if path is not None and not Path(path).is_file():
                raise InputError(f"{label} {path}: {'is not a file' if Path(path).exists() else 'file not found'}")


@dataclass(frozen=True)
class ClipScore:
    """The scores of one crop clip or face track (frame numbers at 25 fps for tracks)."""

    start_frame: int
    end_frame: int
    lse: LseResult
    expert: ExpertReport | None = None
    visual_quality: QualityReport | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"start_frame": self.start_frame, "end_frame": self.end_frame, "lse": self.lse.to_json()}
        if self.expert is not None:
            out["expert"] = self.expert.to_json()
        if self.visual_quality is not None:
            out["visual_quality"] = self.visual_quality.to_json()
        return out


@dataclass(frozen=True)
class ScoreReport:
    """What ``wav2lip-trt score`` prints and writes."""

    video: Path
    audio: Path
    crops: bool
    clips: list[ClipScore]
    frames: int  # frames read (at the video's own rate for crops, 25 fps otherwise)
    audio_samples: int  # 16 kHz samples
    fps: float | None  # the video's own frame rate, when known
    seconds: float

    def mean_lse(self) -> dict[str, float]:
        """Means of LSE-D and LSE-C over the clips, unweighted (as averaging the script's lines)."""
        return {"min_dist": float(np.mean([c.lse.min_dist for c in self.clips])),
                "confidence": float(np.mean([c.lse.confidence for c in self.clips]))}

    def to_json(self) -> dict[str, Any]:
        head = {"video": str(self.video), "audio": str(self.audio), "crops": self.crops, "frames": self.frames,
                "audio_samples": self.audio_samples, "fps": self.fps, "seconds": round(self.seconds, 3)}
        if self.crops:
            clip = self.clips[0].to_json()
            del clip["start_frame"], clip["end_frame"]
            return {**head, **clip}
        return {**head, "tracks": [c.to_json() for c in self.clips], "lse": self.mean_lse()}


def _load_models(options: ScoreOptions) -> ScoringNetworks:
    """The networks on ``options.backend`` (the tracked path's S3FD too), all on one device and stream."""
    precision = options.precision
    if precision == "auto":  # a metric compared across tools: FP32, except for engines (built FP16 by default)
        precision = "fp16" if options.backend == "tensorrt" else "fp32"
    request = RunnerRequest(checkpoint_path=None, s3fd_checkpoint=None, device=resolve_device(options.device),
                            precision=precision, engines_dir=Path(options.engines_dir), flavor=options.flavor)
    return load_scoring_networks(options.backend, request, expert=options.expert_checkpoint,
                                 disc=options.disc_checkpoint, syncnet=options.syncnet_checkpoint,
                                 s3fd=None if options.crops else options.s3fd_checkpoint)


def _video_fps(video: Path) -> float | None:
    cap = cv2.VideoCapture(str(video))
    try:
        fps = float(cap.get(cv2.CAP_PROP_FPS)) if cap.isOpened() else 0.0
    finally:
        cap.release()
    return fps if np.isfinite(fps) and fps > 0 else None


def _mel_chunks(audio_int16: np.ndarray, fps: float) -> MelChunks:
    """Wav2Lip's mel chunks of the same audio (int16 / 32768, as librosa reads a 16-bit WAV)."""
    wav = audio_int16.astype(np.float32) / np.float32(32768.0)
    return MelChunks(melspectrogram(wav), fps)


def _expert_scores(models: ScoringNetworks, faces: Iterable[np.ndarray], chunks: Callable[[], MelChunks],
                   options: ScoreOptions) -> tuple[ExpertReport | None, QualityReport | None]:
    """Streams (96, 96, 3) uint8 BGR faces, one per frame, through the expert and the discriminator."""
    if models.expert is None and models.disc is None:
        return None, None
    mel = chunks() if models.expert is not None else None
    scorer = OnlineScorer(models.expert, models.disc, device=models.device, vshift=options.vshift, stream=models.stream)
    limit = len(mel) if mel is not None else None
    batch: list[np.ndarray] = []
    count = 0

    def flush() -> None:
        start = count - len(batch)
        idx = np.arange(start, count)
        scorer.add(idx, np.stack(batch), mel.gather(idx) if mel is not None else None)
        batch.clear()

    for face in faces:
        if limit is not None and count >= limit:
            break
        batch.append(face)
        count += 1
        if len(batch) == EXPERT_CHUNK:
            flush()
    if batch:
        flush()
    expert = scorer.expert_report(count) if models.expert is not None else None
    quality = scorer.quality_report(count) if models.disc is not None else None
    return expert, quality


def _lse(models: ScoringNetworks, frames: Iterable[np.ndarray], audio: np.ndarray, num_frames: int, what: str,
         options: ScoreOptions) -> LseResult:
    n = check_window_count(num_frames, len(audio), what)
    mfcc = lse_mfcc(audio)
    assert models.syncnet is not None
    im_feat = lip_features(models.syncnet, frames, n, options.batch_size, models.device)
    cc_feat = audio_features(models.syncnet, mfcc, n, options.batch_size, models.device)
    return lse_scores(im_feat, cc_feat, options.vshift)


def score_crops(options: ScoreOptions, models: ScoringNetworks, ffmpeg: str) -> ScoreReport:
    """The exact path: ``SyncNetInstance_calc_scores.evaluate`` on one face-crop clip."""
    start = time.perf_counter()
    fps = _video_fps(options.video)
    if fps is not None and abs(fps - LSE_FPS) > 1e-3:
        log.warning("%s runs at %.3g fps; LSE assumes 25 fps (640 audio samples per frame), as the original does",
                    options.video, fps)
    audio_source = options.audio or options.video
    with tempfile.TemporaryDirectory(prefix="wav2lip-trt-score-") as tmp:
        folder = Path(tmp)
        audio = extract_audio_int16(audio_source, folder, ffmpeg)
        files = extract_jpeg_frames(options.video, folder, ffmpeg)
        log.info("scoring %d frames and %.2f s of audio", len(files), len(audio) / 16000)
        lse = _lse(models, read_lse_frames(files), audio, len(files), str(options.video), options)
        faces = (cv2.resize(f, (FACE_SIZE, FACE_SIZE)) for f in read_jpeg_frames(files))
        expert, quality = _expert_scores(models, faces, lambda: _mel_chunks(audio, fps or LSE_FPS), options)
    clip = ClipScore(0, len(files) - 1, lse, expert, quality)
    return ScoreReport(options.video, audio_source, True, [clip], len(files), len(audio), fps,
                       time.perf_counter() - start)


def _detect(s3fd: Callable[[torch.Tensor], list[torch.Tensor]], frames: Iterator[np.ndarray], options: ScoreOptions, device: torch.device
            ) -> list[np.ndarray]:
    detections: list[np.ndarray] = []
    batch: list[np.ndarray] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == options.detect_batch_size:
            detections += detect_all_faces(s3fd, np.stack(batch), options.tracking, device)
            batch.clear()
    if batch:
        detections += detect_all_faces(s3fd, np.stack(batch), options.tracking, device)
    return detections


def find_tracks(options: ScoreOptions, models: ScoringNetworks, ffmpeg: str) -> tuple[list[FaceTrack], int, int]:
    """(tracks, frames at 25 fps, frames with a confident face) for the whole video."""
    assert models.detector is not None
    width, height = video_size(options.video, ffmpeg)
    detections = _detect(models.detector, decode_frames(options.video, ffmpeg, width, height, LSE_FPS), options,
                         models.device)
    with_face = sum(len(d) > 0 for d in detections)
    if len(detections) < options.tracking.min_track:  # upstream skips shots shorter than min_track
        return [], len(detections), with_face
    tracks = [smooth_track(f, b) for f, b in link_tracks(detections, options.tracking)]
    return tracks, len(detections), with_face


def score_tracks(options: ScoreOptions, models: ScoringNetworks, ffmpeg: str) -> ScoreReport:
    """Detect, track and crop faces as run_pipeline.py does, then score every track."""
    start = time.perf_counter()
    audio_source = options.audio or options.video
    with tempfile.TemporaryDirectory(prefix="wav2lip-trt-score-") as tmp:
        audio = extract_audio_int16(audio_source, Path(tmp), ffmpeg)
    log.info("detecting faces in %s", options.video)
    tracks, frames, with_face = find_tracks(options, models, ffmpeg)
    if not tracks:
        t = options.tracking
        raise NoFaceError(
            f"{options.video}: no face track to score: S3FD found a face scoring over {t.conf_th:g} in {with_face} "
            f"of {frames} frames; a track needs more than {t.min_track} frames (--min-track) with faces larger "
            f"than {t.min_face_size:g} pixels (--min-face-size)"
        )
    width, height = video_size(options.video, ffmpeg)
    clips = []
    for number, track in enumerate(tracks):
        log.info("scoring track %d: frames %d-%d", number, track.start_frame, track.end_frame)
        piece = audio[track.start_frame * SAMPLES_PER_FRAME: (track.end_frame + 1) * SAMPLES_PER_FRAME]

        def pairs(track: FaceTrack = track) -> Iterator[tuple[np.ndarray, np.ndarray]]:
            frames = decode_frames(options.video, ffmpeg, width, height, LSE_FPS)
            return track_crops(frames, track, options.tracking.crop_scale)

        what = f"{options.video} track {number} (frames {track.start_frame}-{track.end_frame})"
        lse = _lse(models, (crop for crop, _ in pairs()), piece, len(track.frames), what, options)
        # a second decoding pass keeps memory flat instead of holding the track's faces
        expert, quality = _expert_scores(models, (face for _, face in pairs()), lambda: _mel_chunks(piece, LSE_FPS),
                                         options)
        clips.append(ClipScore(track.start_frame, track.end_frame, lse, expert, quality))
    return ScoreReport(options.video, audio_source, False, clips, frames, len(audio), _video_fps(options.video),
                       time.perf_counter() - start)


def score_video(options: ScoreOptions) -> ScoreReport:
    """Score ``options.video``: LSE per crop clip or face track, plus the expert and discriminator if given.

    Raises :class:`wav2lip_trt.errors.Wav2LipTrtError` subclasses for every user error (missing or
    wrong checkpoint, no video or audio stream, too short, no face track).
    """
    options.check()
    ffmpeg = find_ffmpeg(options.ffmpeg)
    with _load_models(options) as models, on_stream(models.stream):
        # one stream for everything, as in infer: the inputs made here and the runners' work are
        # ordered by it, never by the legacy default stream
        if options.crops:
            return score_crops(options, models, ffmpeg)
        return score_tracks(options, models, ffmpeg)

