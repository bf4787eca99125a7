"""Synthetic media for tests: speech-like audio, WAV files, and ffmpeg-made mp3/mp4 files.

Everything is generated from a seed, so tests need no downloaded media.
"""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import numpy as np

from wav2lip_trt.ffmpeg import find_ffmpeg


def make_speechlike_audio(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
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


def make_sine(seconds: float, rate: int = 16000, freq: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    """A float32 mono sine."""
    t = np.arange(int(round(seconds * rate))) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


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


def run_ffmpeg(*args: str | os.PathLike[str]) -> None:
    """Run the project's ffmpeg with ``args`` (quiet, overwriting); fail with its log."""
    cmd = [find_ffmpeg(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *map(os.fspath, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")


def encode_audio(src: str | os.PathLike[str], dst: str | os.PathLike[str], *codec_args: str) -> Path:
    """Transcode ``src`` to ``dst`` (format from the extension), e.g. ``"-c:a", "libmp3lame"``."""
    run_ffmpeg("-i", src, *codec_args, dst)
    return Path(dst)


def make_video(
    path: str | os.PathLike[str],
    *,
    seconds: float,
    fps: float = 25.0,
    size: tuple[int, int] = (64, 48),
    audio: str | os.PathLike[str] | None = None,
    video_codec: str = "mpeg4",
    audio_codec: str = "aac",
) -> Path:
    """A test-pattern video of ``size`` = (width, height); with ``audio`` (a file), an audio track too."""
    width, height = size
    args: list[str | os.PathLike[str]] = [
        "-f", "lavfi", "-i", f"testsrc=size={width}x{height}:rate={fps}:duration={seconds}",
    ]  # fmt: skip
    if audio is not None:
        args += ["-i", audio, "-c:a", audio_codec]
    args += ["-c:v", video_codec, "-pix_fmt", "yuv420p", path]
    run_ffmpeg(*args)
    return Path(path)
