"""Wav2Lip's mel windows from audio that arrives in pieces, bit-identical to the whole-file computation.

:class:`StreamingMel` takes float32 samples at 16 kHz in chunks of any size (one sample to more
than the whole audio) and hands out each video frame's (80, 16) mel window as soon as nothing that
arrives later can change it; :meth:`StreamingMel.close` hands out the rest. Once closed, the
windows equal ``MelChunks(melspectrogram(whole_audio), fps)`` bit for bit: the pre-emphasis, the
padding, the STFT (:func:`~wav2lip_trt.audio.magnitudes`) and the filterbank and dB scaling
(:func:`~wav2lip_trt.audio.mel_columns`) are the whole-file code's own. The filterbank product
gives a column its bits according to how many columns share it when there are few (OpenBLAS on
x86-64: under 16), so each of the stream's products holds its new columns after the latest
earlier ones, :data:`~wav2lip_trt.audio.STREAM_FILTERBANK_COLUMNS` wide (zeros before column 0),
as wide as the whole file's products are (tested on this CPU's BLAS; a BLAS whose kernels change
with the width above 16 columns would break the equality, and the tests would show it).

When is a frame final? With N samples received (N_total unknown until the close):

* Mel column t (hop 200, centred window of 800) reads pre-emphasised samples [200t - 400,
  200t + 400). The left reflect padding (t < 2) reads samples 1..400, known once N >= 401. The
  right padding depends on where the audio ends, so column t is final only when it needs none:
  200t + 400 <= N. Final columns: C(N) = (N - 400) // 200 + 1 for N >= 401, else 0.
* Columns are computed as soon as they are final, on close the rest.
* Frame i's window starts at column s_i = int(i * (80. / fps)) (the original's float product,
  truncated) and spans 16 columns. Every final column lies at least two columns before the last
  column T - 1 = N_total // 200 of the whole audio (C(N) <= T - 2), so a window inside the
  computed columns is an ordinary window in the offline sequence too, never the tail rule's.
  Frame i is therefore final once N >= 200 * (s_i + 16) + 200: at 25 fps 212.5 ms after the
  frame's own time (16 columns span 187.5 ms of hops, plus half an FFT window).
* On close, the remaining columns are computed with the end's reflect padding (audio of at most
  400 samples is padded by numpy's repeated reflection, as offline), T = 1 + N_total // 200, and
  the remaining frames follow the original's loop: the first window that would run past T is
  replaced by the last 16 columns and ends the sequence.

Memory is bounded: only the samples and columns that a future window can still read are kept.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..audio import (FILTERBANK_COLUMNS, HOP, MEL_FPS, MEL_STEP, N_FFT, NUM_MELS, STREAM_FILTERBANK_COLUMNS,
                     check_chunkable, magnitudes, mel_columns, preemphasize)
from ..errors import AudioError, InputError

_PAD = N_FFT // 2


def final_columns(received: int) -> int:
    """How many mel columns N received samples fix for good, whatever arrives after them."""
    return 0 if received <= _PAD else (received - _PAD) // HOP + 1


def samples_for_frame(index: int, fps: float) -> int:
    """Samples a stream needs before frame ``index`` is final (see the module docstring)."""
    start = int(np.int64(index) * (MEL_FPS / fps))
    return HOP * (start + MEL_STEP) + HOP


class StreamingMel:
    """Incremental mel windows: :meth:`feed` and :meth:`close` return the frames they made final.

    Each result is ``(frame index, (80, 16) float32 window)``, in frame order, every index once.
    """

    def __init__(self, fps: float) -> None:
        fps = float(fps)
        if not (math.isfinite(fps) and fps > 0):
            raise InputError(f"fps must be a positive number, got {fps}")
        self.fps = fps
        self._mult = MEL_FPS / fps
        self.received = 0  # samples fed so far
        self.closed = False
        self._previous: np.float32 | None = None  # last raw sample, for the pre-emphasis
        self._y = np.empty(4 * N_FFT, dtype=np.float64)  # pre-emphasised samples [_y_base, received)
        self._y_base = 0
        self._mel = np.empty((NUM_MELS, 4 * MEL_STEP), dtype=np.float32)  # columns [_mel_base, _columns)
        self._mel_base = 0
        self._columns = 0  # columns computed
        # magnitudes of the latest columns, the rest of each filterbank product (zeros before column 0)
        self._magnitudes = np.zeros((STREAM_FILTERBANK_COLUMNS, N_FFT // 2 + 1), dtype=np.float32)
        self._next = 0  # next frame index to hand out

    @property
    def frames_out(self) -> int:
        return self._next

    def feed(self, samples: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Add float32 mono samples; returns the frames that became final."""
        if self.closed:
            raise InputError("the audio stream is closed")
        wav = np.asarray(samples)
        if wav.dtype != np.float32 or wav.ndim != 1:
            raise InputError(f"expected 1-D float32 samples, got {wav.dtype} with shape {wav.shape}")
        if wav.shape[0] == 0:
            return []
        start = self.received - self._y_base
        self._reserve_samples(start + wav.shape[0])
        preemphasize(wav, self._y[start : start + wav.shape[0]], self._previous)
        self._previous = wav[-1]
        self.received += wav.shape[0]
        done = final_columns(self.received)
        while self._columns < done:
            self._compute(min(done, self._columns + FILTERBANK_COLUMNS), self._padded_range)
        return self._ready()

    def close(self) -> list[tuple[int, np.ndarray]]:
        """End of the audio: the columns that needed the end's padding, and the last frames."""
        if self.closed:
            return []
        self.closed = True
        n = self.received
        if n == 0:
            raise AudioError("audio is empty")
        total = n // HOP + 1
        check_chunkable(total)
        if n <= _PAD:  # nothing was computed and every sample is still here
            padded = np.pad(self._y[:n].copy(), _PAD, mode="reflect")
            tail = lambda lo, hi: padded[lo:hi]  # noqa: E731
        else:
            tail = self._tail_range
        while self._columns < total:
            self._compute(min(total, self._columns + FILTERBANK_COLUMNS), tail)
        out = self._ready()
        while True:
            start = self._start(self._next)
            if start + MEL_STEP > total:
                out.append((self._next, self._window(total - MEL_STEP)))
                self._next += 1
                return out
            out.append((self._next, self._window(start)))
            self._next += 1

    def _start(self, index: int) -> int:
        return int(np.int64(index) * self._mult)

    def _ready(self) -> list[tuple[int, np.ndarray]]:
        out = []
        while (start := self._start(self._next)) + MEL_STEP <= self._columns and not self.closed:
            out.append((self._next, self._window(start)))
            self._next += 1
        self._trim()
        return out

    def _window(self, start: int) -> np.ndarray:
        lo = start - self._mel_base
        return self._mel[:, lo : lo + MEL_STEP].copy()

    def _compute(self, end: int, padded_range) -> None:  # type: ignore[no-untyped-def]
        """Columns [_columns, end) from padded samples, in a product as wide as the whole file's."""
        first = self._columns
        segment = padded_range(first * HOP, (end - 1) * HOP + N_FFT)
        new = magnitudes(sliding_window_view(segment, N_FFT)[::HOP])
        latest, count = self._magnitudes, end - first
        if count >= latest.shape[0]:
            block = mel_columns(new)
            latest[:] = new[-latest.shape[0] :]
        else:
            latest[:-count] = latest[count:]
            latest[-count:] = new
            block = mel_columns(latest)[:, -count:]
        self._reserve_columns(end - self._mel_base)
        self._mel[:, first - self._mel_base : end - self._mel_base] = block
        self._columns = end

    def _padded_range(self, lo: int, hi: int) -> np.ndarray:
        """Padded-signal samples [lo, hi) that need no right padding: y[p - 400], reflected at the start."""
        y, base = self._y, self._y_base
        if lo >= _PAD:
            return y[lo - _PAD - base : hi - _PAD - base]
        assert base == 0  # nothing is trimmed before the first block (the start's reflection) is made
        return np.concatenate((y[_PAD - lo : 0 : -1], y[: hi - _PAD]))  # padded[p] = y[400 - p] for p < 400

    def _tail_range(self, lo: int, hi: int) -> np.ndarray:
        """Padded-signal samples [lo, hi) of the closed stream (N > 400): padded[N + 400 + k] = y[N - 2 - k]."""
        n, y, base = self.received, self._y, self._y_base
        end = n + _PAD
        if hi <= end:
            return self._padded_range(lo, hi)
        inner = self._padded_range(lo, end) if lo < end else np.empty(0, dtype=np.float64)
        first = n - 2 - (max(lo, end) - end) - base
        stop = n - 2 - (hi - end) - base
        mirror = y[first:stop:-1] if stop >= 0 else y[first::-1]
        return np.concatenate((inner, mirror))

    def _reserve_samples(self, needed: int) -> None:
        if needed > self._y.shape[0]:
            grown = np.empty(max(needed, 2 * self._y.shape[0]), dtype=np.float64)
            kept = self.received - self._y_base
            grown[:kept] = self._y[:kept]
            self._y = grown

    def _reserve_columns(self, needed: int) -> None:
        if needed > self._mel.shape[1]:
            grown = np.empty((NUM_MELS, max(needed, 2 * self._mel.shape[1])), dtype=np.float32)
            kept = self._columns - self._mel_base
            grown[:, :kept] = self._mel[:, :kept]
            self._mel = grown

    def _trim(self) -> None:
        """Drop the samples and columns no later window can read."""
        keep_col = max(0, min(self._start(self._next), final_columns(self.received) - MEL_STEP))
        if keep_col - self._mel_base > 2 * MEL_STEP:
            kept = self._columns - keep_col
            self._mel[:, :kept] = self._mel[:, keep_col - self._mel_base : self._columns - self._mel_base]
            self._mel_base = keep_col
        # the next column to compute reads from sample 200 * _columns - 400; the tail reflection
        # reads back to sample N - 402, so keep at least 400 samples behind the newest
        keep_y = min(self._columns * HOP - _PAD, self.received - _PAD - 2)
        if self._columns == 0 or keep_y - self._y_base <= 2 * N_FFT:
            return
        kept = self.received - keep_y
        self._y[:kept] = self._y[keep_y - self._y_base : self.received - self._y_base]
        self._y_base = keep_y
