"""Frames and audio exactly as the LSE scorer decodes them, and its MFCC.

Upstream runs ``ffmpeg -loglevel error -y -i VIDEO -threads 1 -f image2 DIR/%06d.jpg``, reads the
JPEG files back with ``cv2.imread`` and resizes them to 224x224 with ``cv2.resize`` (INTER_LINEAR);
the audio is ``ffmpeg ... -async 1 -ac 1 -vn -acodec pcm_s16le -ar 16000 audio.wav`` read as int16.
ffmpeg's default JPEG rate control changes the quality from frame to frame, so only the same
commands give the same pixels: they are run here the same way (argument lists, never a shell),
in a private temporary folder. The MFCC is python_speech_features' ``mfcc(audio, 16000)``.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from ..errors import AudioError, FFmpegError, InputError, MissingDependencyError
from .lse import LIP_SIZE

SAMPLE_RATE = 16000
SCORE_INSTALL = "pip install 'wav2lip-trt[score]'"
MFCC_BLOCK = 30_000  # MFCC frames (5 min) per python_speech_features call: bounds its float64 temporaries
MFCC_HOP = 160  # samples between MFCC frames (10 ms)
MFCC_FRAME = 400  # samples per MFCC frame (25 ms)
PREEMPHASIS = 0.97


def _run(cmd: list[str], what: str) -> str:
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              check=False)
    except OSError as exc:
        raise FFmpegError(f"cannot run ffmpeg ({cmd[0]}): {exc}") from None
    log = proc.stderr.decode(errors="replace")
    if proc.returncode != 0:
        lines = [line.strip() for line in log.splitlines() if line.strip()]
        reason = lines[-1] if lines else f"ffmpeg exited with code {proc.returncode}"
        if "does not contain any stream" in log or "Output file does not contain any stream" in log:
            reason = "no such stream"
        raise FFmpegError(f"{what}: {reason}")
    return log


def _input(path: Path) -> str:
    if not path.is_file():
        raise InputError(f"{path}: {'is not a file' if path.exists() else 'file not found'}")
    return os.fspath(path.absolute())  # absolute: never read as stdin ('-') or a protocol ('x:')


def extract_jpeg_frames(video: Path, folder: Path, ffmpeg: str) -> list[Path]:
    """Upstream's frame dump: one ``%06d.jpg`` per frame in ``folder``, sorted by name."""
    target = os.fspath(folder / "%06d.jpg")
    try:
        _run([ffmpeg, "-nostdin", "-loglevel", "error", "-y", "-i", _input(video), "-threads", "1", "-f", "image2",
              target], f"cannot read the frames of {video}")
    except FFmpegError as exc:
        if "no such stream" in str(exc):
            raise InputError(f"{video} has no video stream") from None
        raise
    files = sorted(folder.glob("*.jpg"))
    if not files:
        raise InputError(f"{video} has no video frames")
    return files


def read_lse_frames(files: list[Path]) -> Iterator[np.ndarray]:
    """``cv2.imread`` then ``cv2.resize(img, (224, 224))`` per file: (224, 224, 3) uint8 BGR, streamed."""
    for name in files:
        image = cv2.imread(os.fspath(name))
        if image is None:
            raise InputError(f"cannot read the extracted frame {name}")
        yield cv2.resize(image, (LIP_SIZE, LIP_SIZE))


def read_jpeg_frames(files: list[Path]) -> Iterator[np.ndarray]:
    """The extracted frames at their own size (BGR uint8), for the expert's faces."""
    for name in files:
        image = cv2.imread(os.fspath(name))
        if image is None:
            raise InputError(f"cannot read the extracted frame {name}")
        yield image


def _read_wav_int16(path: Path) -> np.ndarray:
    try:
        from scipy.io import wavfile
    except ImportError:
        raise MissingDependencyError(f"scoring needs scipy: {SCORE_INSTALL}") from None
    rate, audio = wavfile.read(os.fspath(path))
    if rate != SAMPLE_RATE or audio.dtype != np.int16 or audio.ndim != 1:
        raise AudioError(f"{path}: unexpected ffmpeg output ({rate} Hz, {audio.dtype}, shape {audio.shape})")
    return audio


def extract_audio_int16(source: Path, folder: Path, ffmpeg: str) -> np.ndarray:
    """Upstream's audio extraction: mono 16 kHz int16 samples of ``source``'s audio track."""
    wav = folder / "audio.wav"
    try:
        _run([ffmpeg, "-nostdin", "-loglevel", "error", "-y", "-i", _input(source), "-async", "1", "-ac", "1", "-vn",
              "-acodec", "pcm_s16le", "-ar", str(SAMPLE_RATE), os.fspath(wav)], f"cannot decode audio from {source}")
    except FFmpegError as exc:
        if "no such stream" in str(exc):
            raise AudioError(f"{source} has no audio stream; give the audio with --audio") from None
        raise AudioError(str(exc)) from None
    audio = _read_wav_int16(wav)
    wav.unlink()
    if audio.shape[0] == 0:
        raise AudioError(f"{source} contains no audio samples")
    return audio


def _import_mfcc():  # noqa: ANN202 - python_speech_features has no types
    try:
        from python_speech_features import mfcc
    except ImportError:
        raise MissingDependencyError(f"LSE scoring needs python_speech_features: {SCORE_INSTALL}") from None
    return mfcc


def lse_mfcc(audio: np.ndarray) -> np.ndarray:
    """(13, T) float32: ``python_speech_features.mfcc(audio, 16000)`` transposed, on the raw int16 scale.

    Computed in blocks of whole MFCC frames so an hour of audio does not need gigabytes of
    float64 frames: the signal is pre-emphasised once as a whole (first sample kept), then each
    block is framed with pre-emphasis off. Frames are independent, so the values are the same.
    """
    mfcc = _import_mfcc()
    audio = np.asarray(audio)
    if audio.ndim != 1 or audio.shape[0] == 0:
        raise AudioError(f"expected non-empty mono samples, got shape {audio.shape}")
    emphasised = np.append(audio[0], audio[1:] - PREEMPHASIS * audio[:-1])  # float64, as sigproc.preemphasis
    total = 1 if len(audio) <= MFCC_FRAME else 1 + -(-(len(audio) - MFCC_FRAME) // MFCC_HOP)
    blocks = []
    for first in range(0, total, MFCC_BLOCK):
        count = min(MFCC_BLOCK, total - first)
        start = first * MFCC_HOP
        stop = start + (count - 1) * MFCC_HOP + MFCC_FRAME
        feats = mfcc(emphasised[start:stop], SAMPLE_RATE, preemph=0)
        if feats.shape[0] != count:  # pragma: no cover - guards the framing arithmetic
            raise RuntimeError(f"MFCC block gave {feats.shape[0]} frames, expected {count}")
        blocks.append(feats)
    return np.ascontiguousarray(np.concatenate(blocks).T.astype(np.float32))


_SIZE = re.compile(r"Video: rawvideo.*?, (\d+)x(\d+)[ ,]")


def video_size(video: Path, ffmpeg: str) -> tuple[int, int]:
    """(width, height) of the frames ffmpeg decodes (rotation applied), from a one-frame trial."""
    try:
        log = _run([ffmpeg, "-nostdin", "-hide_banner", "-i", _input(video), "-map", "0:v:0", "-map_metadata", "-1",
                    "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "bgr24", "-y", os.devnull],
                   f"cannot read the frames of {video}")
    except FFmpegError as exc:
        if "matches no streams" in str(exc) or "no such stream" in str(exc):
            raise InputError(f"{video} has no video stream") from None
        raise
    output = log.split("Output #0", 1)[-1]
    match = _SIZE.search(output)
    if match is None:
        raise InputError(f"{video}: cannot tell the frame size from ffmpeg's output")
    return int(match.group(1)), int(match.group(2))


def decode_frames(video: Path, ffmpeg: str, width: int, height: int, fps: float = 25.0) -> Iterator[np.ndarray]:
    """(H, W, 3) uint8 BGR frames resampled to ``fps`` (run_pipeline's ``-r 25``), streamed from one ffmpeg."""
    cmd = [ffmpeg, "-nostdin", "-loglevel", "error", "-i", _input(video), "-map", "0:v:0", "-r", f"{fps:g}",
           "-f", "rawvideo", "-pix_fmt", "bgr24", "-"]
    size = width * height * 3
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors)
        assert proc.stdout is not None
        try:
            while True:
                data = proc.stdout.read(size)
                if len(data) < size:
                    break
                yield np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3)
        finally:
            proc.stdout.close()
            if proc.poll() is None:
                proc.kill()
            code = proc.wait()
        if code not in (0, -9):
            errors.seek(0)
            lines = [line.strip() for line in errors.read().decode(errors="replace").splitlines() if line.strip()]
            raise FFmpegError(f"cannot read the frames of {video}: {lines[-1] if lines else f'ffmpeg exited with {code}'}")
