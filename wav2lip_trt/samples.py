"""Synthetic sample media: a talking-face clip and speech-like audio, made on the spot.

The demo, the tests and ``bench`` need real files (decoded by OpenCV, encoded by ffmpeg) without
shipping binary media or downloading anything; these are deterministic for a given seed.
"""

from __future__ import annotations

import os
import struct
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np

from .encode import frame_rate_arg
from .errors import FFmpegError
from .ffmpeg import find_ffmpeg


def speechlike_audio(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """Float32 mono in [-1, 1] with what a mel front end reacts to in speech.

    Voiced "syllables" (harmonics of a 100-250 Hz pitch with 5 Hz vibrato, a vowel-like spectral
    tilt), noise bursts like fricatives, and short silences between them.
    """
    rng = np.random.default_rng(seed)
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    out = np.zeros(n)
    pos = 0
    while pos < n:
        kind = rng.choice(["voiced", "noise", "silence"], p=[0.6, 0.25, 0.15])
        length = min(n - pos, int(rate * rng.uniform(0.08, 0.3)))
        seg = slice(pos, pos + length)
        envelope = np.sin(np.linspace(0, np.pi, length)) ** 2
        if kind == "voiced":
            f0 = rng.uniform(100, 250)
            pitch = f0 * (1 + 0.03 * np.sin(2 * np.pi * 5 * t[seg]))
            phase = 2 * np.pi * np.cumsum(pitch) / rate
            formant = rng.uniform(500, 2500)
            harmonics = sum(
                np.sin(k * phase) / k * np.exp(-(((k * f0) - formant) ** 2) / (2 * 600.0**2))
                for k in range(1, int(7000 // f0))
            )
            out[seg] = 0.4 * envelope * harmonics
        elif kind == "noise":
            noise = rng.standard_normal(length)
            noise = np.diff(noise, prepend=0.0)  # tilt towards high frequencies, like an "s"
            out[seg] = 0.08 * envelope * noise
        pos += length
    out += 1e-3 * rng.standard_normal(n)  # a noise floor, as in any recording
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def float_to_int16(samples: np.ndarray) -> np.ndarray:
    """[-1, 1] floats -> int16 PCM (rounded, clipped)."""
    return np.clip(np.round(np.asarray(samples) * 32767.0), -32768, 32767).astype(np.int16)


def write_wav(path: str | os.PathLike[str], samples: np.ndarray, rate: int) -> Path:
    """Write a WAV file: int16 -> 16-bit PCM, float32 -> 32-bit IEEE float.

    ``samples`` is (n,) for mono or (n, channels).
    """
    samples = np.asarray(samples)
    if samples.ndim == 1:
        samples = samples[:, None]
    if samples.dtype == np.int16:
        tag = 1
    elif samples.dtype == np.float32:
        tag = 3
    else:
        raise TypeError(f"write_wav takes int16 or float32 samples, got {samples.dtype}")
    channels = samples.shape[1]
    width = samples.dtype.itemsize
    data = np.ascontiguousarray(samples, dtype=samples.dtype.newbyteorder("<")).tobytes()
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * channels * width, channels * width, 8 * width)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data + b"\0" * (len(data) & 1)
    path = Path(path)
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


def talking_face_frames(
    count: int, width: int = 160, height: int = 128, seed: int = 0, mouth: Iterable[float] | None = None
) -> Iterator[np.ndarray]:
    """BGR uint8 frames of a cartoon face that drifts slightly and opens its mouth by ``mouth`` (0..1)."""
    rng = np.random.default_rng(seed)
    openness = list(mouth) if mouth is not None else list(0.5 + 0.5 * np.sin(np.arange(count) * 0.9))
    yy, xx = np.mgrid[0:height, 0:width]
    background = np.stack(
        [40 + 60 * xx / width, 70 + 50 * yy / height, 90 + 30 * (xx + yy) / (width + height)], axis=-1
    ).astype(np.uint8)
    drift = rng.normal(0, 1.0, (count, 2)).cumsum(axis=0) * 0.3
    for i in range(count):
        frame = background.copy()
        cx = int(width / 2 + drift[i, 0])
        cy = int(height / 2 + drift[i, 1])
        fw, fh = int(width * 0.22), int(height * 0.34)
        cv2.ellipse(frame, (cx, cy), (fw, fh), 0, 0, 360, (120, 160, 215), -1, cv2.LINE_AA)
        for ex in (-1, 1):
            eye = (cx + ex * fw // 2, cy - fh // 4)
            cv2.ellipse(frame, eye, (max(2, fw // 5), max(1, fh // 10)), 0, 0, 360, (250, 250, 250), -1, cv2.LINE_AA)
            cv2.circle(frame, eye, max(1, fh // 14), (40, 30, 20), -1, cv2.LINE_AA)
        cv2.line(frame, (cx, cy - fh // 8), (cx - 2, cy + fh // 8), (90, 120, 170), 2, cv2.LINE_AA)
        o = float(openness[i % len(openness)])
        mouth_h = max(1, int(fh * (0.04 + 0.16 * o)))
        cv2.ellipse(frame, (cx, cy + fh // 2), (fw // 2, mouth_h), 0, 0, 360, (60, 50, 150), -1, cv2.LINE_AA)
        yield frame


def write_video(
    path: str | os.PathLike[str],
    frames: Iterable[np.ndarray],
    fps: float,
    *,
    audio: str | os.PathLike[str] | None = None,
    codec: str = "libx264",
    ffmpeg: str | None = None,
) -> Path:
    """Encode BGR frames (and optionally an audio file's track) with ffmpeg; returns ``path``."""
    frames = iter(frames)
    first = next(frames)
    h, w = first.shape[:2]
    cmd = [find_ffmpeg(ffmpeg), "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "bgr24",
           "-s", f"{w}x{h}", "-framerate", frame_rate_arg(fps), "-i", "pipe:0"]
    if audio is not None:
        cmd += ["-i", str(audio), "-map", "0:v:0", "-map", "1:a:0", "-c:a", "aac"]
    cmd += ["-c:v", codec]
    if codec == "libx264":
        cmd += ["-pix_fmt", "yuv420p" if w % 2 == 0 and h % 2 == 0 else "yuv444p", "-crf", "12"]
    proc = subprocess.Popen(cmd + [str(path)], stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None
    try:
        proc.stdin.write(first.tobytes())
        for frame in frames:
            proc.stdin.write(np.ascontiguousarray(frame).tobytes())
        proc.stdin.close()
    except BrokenPipeError:
        pass
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.wait() != 0:
        raise FFmpegError(f"writing {path}: {err.strip().splitlines()[-1] if err.strip() else 'ffmpeg failed'}")
    return Path(path)


def write_talking_clip(
    directory: str | os.PathLike[str], seconds: float = 2.0, fps: float = 25.0, width: int = 160, height: int = 128,
    seed: int = 0, ffmpeg: str | None = None,
) -> tuple[Path, Path]:
    """A face video (H.264 mp4, no audio) and a 16 kHz speech-like WAV of the same length."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    audio = speechlike_audio(seconds, seed=seed)
    wav = write_wav(directory / "speech.wav", float_to_int16(audio), 16000)
    count = int(round(seconds * fps))
    hop = max(1, int(16000 / fps))
    loudness = [float(np.abs(audio[i * hop:(i + 1) * hop]).mean()) for i in range(count)]
    peak = max(loudness) or 1.0
    video = write_video(
        directory / "face.mp4",
        talking_face_frames(count, width, height, seed, mouth=[v / peak for v in loudness]),
        fps, ffmpeg=ffmpeg,
    )
    return video, wav
