"""Where a stream's audio comes from: a file (as fast as possible, or paced at real time) or raw PCM on a pipe.

Both yield mono float32 chunks at 16 kHz with the sample values the whole-file path reads
(:func:`wav2lip_trt.audio.load_audio` for files; ``x / 32768`` for 16-bit PCM), so a file streamed
in chunks gives ``infer``'s frames. Raw PCM at another rate goes through soxr's streaming
resampler (HQ, as files are resampled); channels are averaged as librosa averages them.
"""

from __future__ import annotations

import logging
import os
import select
import time
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np

from ..audio import SAMPLE_RATE
from ..errors import AudioError, InputError

log = logging.getLogger(__name__)

FORMATS = {"s16le": np.dtype("<i2"), "f32le": np.dtype("<f4")}
MAX_RATE = 768000


def file_chunks(wav: np.ndarray, chunk_seconds: float, *, realtime: bool = False) -> Iterator[np.ndarray]:
    """Samples (from :func:`~wav2lip_trt.audio.load_audio`) in chunks of ``chunk_seconds``; with ``realtime``
    each chunk waits until it would have been spoken."""
    step = max(1, int(round(chunk_seconds * SAMPLE_RATE)))
    start = time.perf_counter()
    for pos in range(0, wav.shape[0], step):
        if realtime:
            wait = start + (pos + step) / SAMPLE_RATE - time.perf_counter()  # a chunk exists once it is spoken
            if wait > 0:
                time.sleep(wait)
        yield wav[pos : pos + step]


class PcmReader:
    """Raw interleaved PCM from a binary stream (stdin), as mono float32 chunks at 16 kHz.

    ``idle_timeout``: seconds without a byte after which the stream is taken as ended (a sender that
    stopped without closing); None waits for ever. ``stopped_early`` tells the caller it happened.
    """

    def __init__(self, stream: BinaryIO, *, sample_format: str = "s16le", rate: int = SAMPLE_RATE, channels: int = 1,
                 chunk_seconds: float = 0.02, idle_timeout: float | None = None, label: str = "stdin") -> None:
        if sample_format not in FORMATS:
            raise InputError(f"--format must be one of {', '.join(FORMATS)}, got {sample_format!r}")
        if not isinstance(rate, int) or not 0 < rate <= MAX_RATE:
            raise InputError(f"--rate must be a sample rate in Hz, 1..{MAX_RATE}, got {rate}")
        if not isinstance(channels, int) or not 1 <= channels <= 64:
            raise InputError(f"--channels must be 1..64, got {channels}")
        self.stream, self.dtype, self.rate, self.channels = stream, FORMATS[sample_format], rate, channels
        self.sample_format, self.label = sample_format, label
        self.frame_bytes = self.dtype.itemsize * channels
        self.read_bytes = max(self.frame_bytes, int(chunk_seconds * rate) * self.frame_bytes)
        self.idle_timeout = idle_timeout
        self.stopped_early = False
        self.received_bytes = 0
        self._resampler = None
        if rate != SAMPLE_RATE:
            import soxr

            self._resampler = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")

    def __iter__(self) -> Iterator[np.ndarray]:
        left = b""
        first = True
        while True:
            data = self._read()
            if data is None:  # idle for too long
                self.stopped_early = True
                log.warning("%s: no audio for %g s; ending the stream as if it were closed", self.label, self.idle_timeout)
                break
            if first and data:
                first = False
                if data[:4] in (b"RIFF", b"RIFX", b"RF64"):
                    raise AudioError(f"{self.label} starts with a WAV header; stream raw {self.sample_format} PCM "
                                     f"(ffmpeg -i X -f {self.sample_format} -ac 1 -ar 16000 -) or pass the file with --audio")
            if not data:
                break
            self.received_bytes += len(data)
            data = left + data
            usable = len(data) - len(data) % self.frame_bytes
            left = data[usable:]
            if usable:
                yield self._convert(data[:usable], last=False)
        if left:
            raise AudioError(f"{self.label} ended inside a sample: {self.received_bytes} bytes is not a whole number of "
                             f"{self.channels}-channel {self.sample_format} samples ({self.frame_bytes} bytes each); "
                             "check --format and --channels")
        if self._resampler is not None:
            tail = self._resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
            if tail.shape[0]:
                yield np.ascontiguousarray(tail, dtype=np.float32)

    def _read(self) -> bytes | None:
        if self.idle_timeout is not None:
            try:
                ready, _, _ = select.select([self.stream], [], [], self.idle_timeout)
            except (ValueError, OSError, TypeError):  # not a selectable file: read without a deadline
                ready = [self.stream]
            if not ready:
                return None
        fileno = getattr(self.stream, "fileno", None)
        try:
            if fileno is not None:
                return os.read(fileno(), self.read_bytes)
        except (OSError, ValueError):
            pass
        return self.stream.read(self.read_bytes)

    def _convert(self, data: bytes, *, last: bool) -> np.ndarray:
        samples = np.frombuffer(data, dtype=self.dtype).reshape(-1, self.channels).astype(np.float32)
        if self.dtype.kind == "i":
            samples *= np.float32(1.0 / 32768.0)
        mono = samples[:, 0] if self.channels == 1 else np.mean(samples.T, axis=0)
        mono = np.ascontiguousarray(mono, dtype=np.float32)
        if self._resampler is None:
            return mono
        return np.ascontiguousarray(self._resampler.resample_chunk(mono, last=last), dtype=np.float32)
