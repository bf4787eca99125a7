"""Audio decoding, Wav2Lip's mel spectrogram and its per-frame mel chunks.

The numbers follow the original Wav2Lip (librosa 0.7, numpy 1.x) so that the model sees the same
input: see the reference spec, sections 3 and 4. Only numpy, soxr and an ffmpeg executable are
needed at run time; librosa and scipy serve as independent references in the tests.
"""

from __future__ import annotations

import math
import os
import struct
import subprocess
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import overload

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .errors import AudioError, FFmpegError, InputError
from .ffmpeg import find_ffmpeg

SAMPLE_RATE = 16000  # Hz
N_FFT = 800  # samples (50 ms)
HOP = 200  # samples (12.5 ms) between mel columns
WIN = 800  # samples, periodic Hann
NUM_MELS = 80  # mel bands
FMIN = 55.0  # Hz, lowest mel band edge
FMAX = 7600.0  # Hz, highest mel band edge
PREEMPHASIS = 0.97  # y[n] = x[n] - 0.97 x[n-1]
REF_LEVEL_DB = 20  # dB subtracted after the amplitude -> dB conversion
MIN_LEVEL_DB = -100  # dB, floor of the normalised range
MAX_ABS_VALUE = 4.0  # the normalised mel lies in [-4, 4]
MEL_STEP = 16  # mel columns per chunk (0.2 s)
MEL_FPS = 80.0  # mel columns per second (SAMPLE_RATE / HOP)

NAN_MESSAGE = (
    "Mel contains nan! Using a TTS voice? Add a small epsilon noise to the wav file and try again"
)

FILTERBANK_COLUMNS = 2048
"""Columns per filterbank product in the whole-file mel. The original multiplies every column at
once (``np.dot(basis, |D|)``); BLAS gives a column the same bits in any product that is wide
enough (OpenBLAS on x86-64: 16 columns or more; 4 or 8 differ in the last bit, and those bits
reach the generator's uint8 faces), so the mel is made in products of exactly this many columns
— the last one overlapping the one before — or of all columns when there are fewer: the
original's bits, with the float64 temporaries bounded (~13 MB) for any length. The FFT's bits
do not depend on how many frames share a call. The stream (:mod:`wav2lip_trt.live.mel`) makes
its products :data:`STREAM_FILTERBANK_COLUMNS` wide for the same reason."""
STREAM_FILTERBANK_COLUMNS = 64  # a stream's product: its new columns after the latest earlier ones
_MONO_BLOCK = 1 << 20  # sample frames per int -> float conversion block


def load_audio(path: str | os.PathLike[str], *, ffmpeg: str | os.PathLike[str] | None = None) -> np.ndarray:
    """Decode ``path`` to mono float32 at 16 kHz, with the sample values the original saw.

    The original read a name ending in ``.wav`` directly (int16 -> x/32768, float WAV as is) and
    converted anything else with ``ffmpeg -i X temp.wav`` first, i.e. to 16-bit PCM at the source
    rate. Both routes are reproduced through one ffmpeg pipe, so no temporary file is written.
    Channels are averaged before resampling, as librosa does. A rate other than 16 kHz is
    resampled with soxr (modern librosa's default); the original used resampy, so only 16 kHz
    inputs give bit-identical samples.
    """
    path = Path(path)
    if not path.is_file():
        problem = "is not a file" if path.exists() else "not found"
        raise AudioError(f"audio file {problem}: {path}")
    as_is = os.fspath(path).endswith(".wav")  # the original's test, case-sensitive
    samples, rate = _decode(path, "pcm_f32le" if as_is else "pcm_s16le", find_ffmpeg(ffmpeg))
    if samples.shape[0] == 0:
        raise AudioError(f"{path} contains no audio samples")
    wav = _to_mono_float32(samples)
    if rate != SAMPLE_RATE:
        wav = _resample(wav, rate)
    return wav


def _decode(path: Path, codec: str, ffmpeg: str) -> tuple[np.ndarray, int]:
    """Run ffmpeg to a WAV pipe; the WAV header tells the source's rate and channel count."""
    cmd = [
        ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error",
        "-i", os.fspath(path.absolute()),  # absolute: never read as stdin ('-') or a protocol ('x:')
        "-vn", "-sn", "-dn", "-map_metadata", "-1",
        "-c:a", codec, "-f", "wav", "-",
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    except OSError as exc:
        raise FFmpegError(f"cannot run ffmpeg ({ffmpeg}): {exc}") from None
    if proc.returncode != 0:
        log = proc.stderr.decode(errors="replace")
        if "does not contain any stream" in log:
            raise AudioError(f"{path} has no audio stream")
        lines = [line.strip() for line in log.splitlines() if line.strip()]
        reason = lines[-1] if lines else f"ffmpeg exited with code {proc.returncode}"
        raise AudioError(f"cannot decode audio from {path}: {reason}")
    try:
        channels, rate, bits, data = _parse_wav(proc.stdout)
    except ValueError as exc:
        raise AudioError(f"cannot decode audio from {path}: {exc}") from None
    dtype = np.dtype("<i2") if codec == "pcm_s16le" else np.dtype("<f4")
    if bits != dtype.itemsize * 8 or channels < 1 or rate < 1:
        raise AudioError(
            f"cannot decode audio from {path}: unexpected ffmpeg output "
            f"({channels} channels, {rate} Hz, {bits} bits)"
        )
    frames = len(data) // (dtype.itemsize * channels)
    samples = np.frombuffer(data, dtype=dtype, count=frames * channels).reshape(frames, channels)
    return samples, rate


def _parse_wav(buf: bytes) -> tuple[int, int, int, memoryview]:
    """Return (channels, rate, bits per sample, sample bytes) of a WAV stream.

    ffmpeg writing to a pipe cannot seek back, so the RIFF and data sizes are placeholders:
    the samples run from the data chunk to the end of the stream.
    """
    if len(buf) < 12 or buf[:4] != b"RIFF" or buf[8:12] != b"WAVE":
        raise ValueError("ffmpeg did not produce a WAV stream")
    fmt = None
    pos = 12
    while pos + 8 <= len(buf):
        chunk_id = buf[pos : pos + 4]
        (size,) = struct.unpack_from("<I", buf, pos + 4)
        body = pos + 8
        if chunk_id == b"data":
            if fmt is None:
                raise ValueError("WAV stream has no fmt chunk")
            return (*fmt, memoryview(buf)[body:])
        if chunk_id == b"fmt ":
            if size < 16:
                raise ValueError("WAV fmt chunk is truncated")
            _, channels, rate = struct.unpack_from("<HHI", buf, body)
            (bits,) = struct.unpack_from("<H", buf, body + 14)
            fmt = (channels, rate, bits)
        pos = body + size + (size & 1)
    raise ValueError("WAV stream has no data chunk")


def _to_mono_float32(samples: np.ndarray) -> np.ndarray:
    """(n, channels) int16 or float32 -> (n,) float32, the channel mean as librosa computes it."""
    if samples.dtype.kind == "f":
        scale = None
    else:
        scale = np.float32(1.0 / 32768.0)  # exact: int16 -> x / 2**15, as libsndfile reads it
    n, channels = samples.shape
    out = np.empty(n, dtype=np.float32)
    for start in range(0, n, _MONO_BLOCK):
        block = samples[start : start + _MONO_BLOCK].astype(np.float32)
        if scale is not None:
            block *= scale
        # librosa reads (n, channels) and averages the transposed (channels, n) view
        out[start : start + len(block)] = block[:, 0] if channels == 1 else np.mean(block.T, axis=0)
    return out


def _resample(wav: np.ndarray, rate: int) -> np.ndarray:
    """Resample to 16 kHz like librosa >= 0.10 (soxr HQ, length fixed to ceil(n * ratio))."""
    import soxr

    n_out = int(np.ceil(wav.shape[-1] * (float(SAMPLE_RATE) / rate)))
    out = soxr.resample(wav, rate, SAMPLE_RATE, quality="HQ").astype(np.float32, copy=False)
    if out.shape[0] >= n_out:
        return np.ascontiguousarray(out[:n_out])
    return np.pad(out, (0, n_out - out.shape[0]))


@lru_cache(maxsize=1)
def mel_filters() -> np.ndarray:
    """The (80, 401) float32 Slaney mel filterbank of librosa.filters.mel(sr=16000, n_fft=800, ...).

    Built with librosa 0.7's arithmetic (weights rounded to float32 before the area
    normalisation) so the bank matches the reference bit for bit, not just closely.
    """
    fft_freqs = np.linspace(0, float(SAMPLE_RATE) / 2, 1 + N_FFT // 2, endpoint=True)
    mel_edges = np.linspace(_hz_to_mel(FMIN), _hz_to_mel(FMAX), NUM_MELS + 2)
    band_freqs = _mel_to_hz(mel_edges)
    widths = np.diff(band_freqs)
    ramps = np.subtract.outer(band_freqs, fft_freqs)
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper)).astype(np.float32)
    area_norm = 2.0 / (band_freqs[2:] - band_freqs[:-2])
    weights = (weights * area_norm[:, None]).astype(np.float32)
    weights.setflags(write=False)
    return weights


_SLANEY_F_SP = 200.0 / 3  # Hz per mel below 1 kHz
_SLANEY_MIN_LOG_HZ = 1000.0
_SLANEY_MIN_LOG_MEL = _SLANEY_MIN_LOG_HZ / _SLANEY_F_SP
_SLANEY_LOGSTEP = np.log(6.4) / 27.0


def _hz_to_mel(hz: float) -> float:
    if hz >= _SLANEY_MIN_LOG_HZ:
        return _SLANEY_MIN_LOG_MEL + np.log(hz / _SLANEY_MIN_LOG_HZ) / _SLANEY_LOGSTEP
    return hz / _SLANEY_F_SP


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    hz = _SLANEY_F_SP * mels
    log_part = mels >= _SLANEY_MIN_LOG_MEL
    hz[log_part] = _SLANEY_MIN_LOG_HZ * np.exp(_SLANEY_LOGSTEP * (mels[log_part] - _SLANEY_MIN_LOG_MEL))
    return hz


@lru_cache(maxsize=1)
def _hann_window() -> np.ndarray:
    """Periodic Hann, computed the way scipy.signal.get_window('hann', 800) does."""
    window = 0.5 + 0.5 * np.cos(np.linspace(-np.pi, np.pi, WIN + 1))[:WIN]
    window.setflags(write=False)
    return window


def preemphasize(wav: np.ndarray, out: np.ndarray, previous: np.floating | None = None) -> np.ndarray:
    """``out[n] = wav[n] - 0.97 wav[n-1]`` in float64, bit-identical to scipy's lfilter.

    ``previous`` is the sample before ``wav[0]`` when the signal arrives in pieces (None: the start,
    where the original's filter sees a zero). Returns ``out``.
    """
    if wav.shape[0] == 0:
        return out
    if previous is None:
        out[0] = wav[0]
        np.multiply(wav[:-1], -PREEMPHASIS, out=out[1:], dtype=np.float64)
        out[1:] += wav[1:]
    else:
        np.multiply(np.concatenate((np.asarray([previous], dtype=wav.dtype), wav[:-1])), -PREEMPHASIS, out=out,
                    dtype=np.float64)
        out += wav
    return out


def _preemphasized_padded(wav: np.ndarray) -> np.ndarray:
    """Pre-emphasis with librosa 0.7's reflect padding of ``N_FFT // 2`` samples at each end.

    Written straight into the padded buffer: for an hour of audio a second float64 copy is 460 MB.
    """
    pad = N_FFT // 2
    n = wav.shape[0]
    out = np.empty(n + 2 * pad, dtype=np.float64)
    y = preemphasize(wav, out[pad : pad + n])
    if n <= pad:  # a reflection longer than the signal folds repeatedly; leave it to numpy
        return np.pad(y.copy(), pad, mode="reflect")
    out[:pad] = y[pad:0:-1]
    out[pad + n :] = y[-2 : -pad - 2 : -1]
    return out


def magnitudes(frames: np.ndarray) -> np.ndarray:
    """|STFT| of (b, 800) float64 padded-signal frames: (b, 401) float32, as librosa 0.7's complex64 result."""
    with np.errstate(invalid="ignore"):  # non-finite input becomes NaN, reported by mel_columns
        return np.abs(np.fft.rfft(frames * _hann_window(), axis=-1).astype(np.complex64))


def mel_columns(magnitude: np.ndarray) -> np.ndarray:
    """Normalised log-mel columns of (b, 401) magnitudes: (80, b) float32 in [-4, 4].

    The one place the filterbank and the dB scaling happen, for whole files and streams alike; a
    product of at least 16 columns keeps the original's bits (see :data:`FILTERBANK_COLUMNS`). The
    dB and normalisation steps stay in float32, as numpy 1.x computed them; numpy 2 would silently
    promote to float64 if a float64 scalar got in. A NaN column (non-finite input) raises the
    original's error.
    """
    min_level = np.float32(np.exp(MIN_LEVEL_DB / 20 * np.log(10)))  # 1e-5 amplitude = -100 dB
    with np.errstate(invalid="ignore"):
        block = mel_filters() @ magnitude.T
        db = 20 * np.log10(np.maximum(min_level, block)) - REF_LEVEL_DB
        normalised = (2 * MAX_ABS_VALUE) * ((db - MIN_LEVEL_DB) / -MIN_LEVEL_DB) - MAX_ABS_VALUE
        out = np.clip(normalised, -MAX_ABS_VALUE, MAX_ABS_VALUE)
    if np.isnan(out).any():
        raise AudioError(NAN_MESSAGE)
    return out


def melspectrogram(wav: np.ndarray) -> np.ndarray:
    """Wav2Lip's normalised log-mel spectrogram: (80, 1 + len(wav) // 200) float32 in [-4, 4]."""
    wav = np.asarray(wav)
    if wav.ndim != 1:
        raise ValueError(f"expected a 1-D waveform, got shape {wav.shape}")
    if wav.shape[0] == 0:
        raise AudioError("audio is empty")
    frames = sliding_window_view(_preemphasized_padded(wav), N_FFT)[::HOP]
    total = frames.shape[0]
    mel = np.empty((NUM_MELS, total), dtype=np.float32)
    width = min(total, FILTERBANK_COLUMNS)
    for start in range(0, total, width):
        start = min(start, total - width)  # the last product is full width too, overlapping
        mel[:, start : start + width] = mel_columns(magnitudes(frames[start : start + width]))
    return mel


def check_chunkable(n_cols: int) -> None:
    """The original needs at least one full 16-column window; say how much audio that is."""
    if n_cols < MEL_STEP:
        need = (MEL_STEP - 1) * HOP / SAMPLE_RATE
        have = (n_cols - 1) * HOP / SAMPLE_RATE
        raise AudioError(f"audio is too short: needs at least {need:g} s, got about {have:g} s")


class MelChunks(Sequence[np.ndarray]):
    """The (80, 16) mel window that goes with each video frame, made on demand.

    Chunk i starts at column ``int(i * (80. / fps))`` -- the float product truncated, exactly as
    the original wrote it -- and looks 0.2 s ahead. The first window that would run past the end
    is replaced by the last 16 columns and ends the sequence, so the last chunk is always
    ``mel[:, T-16:]``. Only the start columns are stored: an hour of audio has ~90k chunks.
    """

    def __init__(self, mel: np.ndarray, fps: float) -> None:
        mel = np.asarray(mel, dtype=np.float32)
        if mel.ndim != 2 or mel.shape[0] != NUM_MELS:
            raise ValueError(f"expected an ({NUM_MELS}, T) mel spectrogram, got shape {mel.shape}")
        fps = float(fps)
        if not (math.isfinite(fps) and fps > 0):
            raise InputError(f"fps must be a positive number, got {fps}")
        n_cols = mel.shape[1]
        check_chunkable(n_cols)
        self.mel = mel
        self.fps = fps
        mult = MEL_FPS / fps
        count = _first_overrun(mult, n_cols - MEL_STEP) + 1
        starts = (np.arange(count, dtype=np.int64) * mult).astype(np.int64)
        starts[-1] = n_cols - MEL_STEP
        starts.setflags(write=False)
        self._starts = starts

    def __len__(self) -> int:
        return self._starts.shape[0]

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...
    @overload
    def __getitem__(self, index: slice) -> list[np.ndarray]: ...
    def __getitem__(self, index: int | slice) -> np.ndarray | list[np.ndarray]:
        """An (80, 16) float32 view of the mel for an int, a list of views for a slice."""
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        start = int(self._starts[index])
        return self.mel[:, start : start + MEL_STEP]

    def starts(self) -> np.ndarray:
        """First mel column of every chunk, int64."""
        return self._starts.copy()

    def gather(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Chunks ``indices`` stacked into one new (B, 80, 16) float32 array (one copy)."""
        windows = sliding_window_view(self.mel, MEL_STEP, axis=1).transpose(1, 0, 2)
        return windows[self._starts[np.asarray(indices, dtype=np.intp)]]

    def __repr__(self) -> str:
        return f"MelChunks({len(self)} chunks, T={self.mel.shape[1]}, fps={self.fps!r})"


def _first_overrun(mult: float, last_start: int) -> int:
    """Smallest i with int(i * mult) > last_start (int(i * mult) never decreases with i)."""
    i = max(0, int(last_start / mult))
    while i > 0 and int((i - 1) * mult) > last_start:
        i -= 1
    while int(i * mult) <= last_start:
        i += 1
    return i
