"""Streaming mel windows equal the whole file's bit for bit, and come out as soon as they are final."""

from __future__ import annotations

import numpy as np
import pytest

from wav2lip_trt.audio import MelChunks, melspectrogram
from wav2lip_trt.errors import AudioError, InputError
from wav2lip_trt.live.mel import StreamingMel, final_columns, samples_for_frame
from wav2lip_trt.samples import speechlike_audio


def chunked(n: int, rng: np.random.Generator, mode: str) -> list[int]:
    """Chunk lengths covering n samples: single samples, random sizes, or one chunk larger than the audio."""
    if mode == "one":
        return [1] * n
    if mode == "big":
        return [n + 1000]
    sizes = []
    while sum(sizes) < n:
        sizes.append(int(rng.choice([1, 2, 3, 199, 200, 201, 399, 401, 640, 1000, 3333])) if rng.random() < 0.7
                     else int(rng.integers(1, 5000)))
    return sizes


def stream(wav: np.ndarray, fps: float, sizes: list[int]) -> tuple[list[tuple[int, np.ndarray]], list[int]]:
    """All windows, and for each the number of samples fed when it came out (-1: on close)."""
    mel = StreamingMel(fps)
    out, when, pos = [], [], 0
    for size in sizes:
        got = mel.feed(wav[pos : pos + size])
        pos = min(len(wav), pos + size)
        out += got
        when += [pos] * len(got)
    got = mel.close()
    return out + got, when + [-1] * len(got)


@pytest.mark.parametrize("n", [3000, 3201, 3400, 4001, 12345, 16000, 24000])
@pytest.mark.parametrize("mode", ["one", "random", "big"])
def test_streamed_windows_are_bit_identical(n, mode) -> None:
    wav = speechlike_audio(n / 16000 + 0.01, seed=n)[:n]
    for fps in (25.0, 29.97):
        expected = MelChunks(melspectrogram(wav), fps)
        rng = np.random.default_rng(n)
        out, _ = stream(wav, fps, chunked(n, rng, mode))
        assert [i for i, _ in out] == list(range(len(expected)))
        for i, window in out:
            assert window.dtype == np.float32 and window.shape == (80, 16)
            assert np.array_equal(window, expected[i]), (fps, i)


@pytest.mark.parametrize("fps", [25.0, 30.0, 23.976, 60.0, 7.0])
def test_random_chunkings_and_frame_rates(fps) -> None:
    rng = np.random.default_rng(int(fps * 1000))
    for trial in range(4):
        n = int(rng.integers(3000, 30000))
        wav = speechlike_audio(n / 16000 + 0.01, seed=trial)[:n]
        expected = MelChunks(melspectrogram(wav), fps)
        out, _ = stream(wav, fps, chunked(n, rng, "random"))
        assert len(out) == len(expected)
        assert all(np.array_equal(w, expected[i]) for i, w in out)


def test_each_frame_comes_out_as_soon_as_it_is_final() -> None:
    """Frame i comes out on the first feed that brings N >= samples_for_frame(i), and the close adds the rest."""
    n, fps = 20000, 25.0
    wav = speechlike_audio(1.3, seed=5)[:n]
    out, when = stream(wav, fps, [1] * n)
    assert samples_for_frame(0, fps) == 3400  # 212.5 ms: 16 columns of hop plus half an FFT window
    for (i, _), fed in zip(out, when):
        need = samples_for_frame(i, fps)
        if need <= n:
            assert fed == need, i
        else:
            assert fed == -1, i
    assert when.count(-1) >= 1  # the last window is the tail rule's, known only on close


def test_final_columns_never_change() -> None:
    """The whole-file mel of any longer audio agrees on the columns final_columns counts."""
    wav = speechlike_audio(0.5, seed=9)
    for n in (401, 599, 600, 601, 1000, 4321):
        shown = final_columns(n)
        assert shown == (0 if n <= 400 else (n - 400) // 200 + 1)
        a = melspectrogram(wav[:n])
        for longer in (n + 1, n + 199, len(wav)):
            b = melspectrogram(wav[:longer])
            assert np.allclose(a[:, :shown], b[:, :shown], atol=1e-5)  # same signal; blocks may differ at the end
    assert final_columns(400) == 0


def test_memory_stays_bounded_on_a_long_stream() -> None:
    mel = StreamingMel(25.0)
    chunk = speechlike_audio(0.2, seed=1)
    for _ in range(600):  # two minutes
        mel.feed(chunk)
    assert mel._y.shape[0] < 20000 and mel._mel.shape[1] < 200
    assert mel.frames_out > 2900


def test_too_short_and_empty_like_offline() -> None:
    short = speechlike_audio(0.15, seed=2)
    with pytest.raises(AudioError) as offline:
        MelChunks(melspectrogram(short), 25.0)
    mel = StreamingMel(25.0)
    mel.feed(short)
    with pytest.raises(AudioError) as streamed:
        mel.close()
    assert str(streamed.value) == str(offline.value)
    with pytest.raises(AudioError, match="audio is empty"):
        StreamingMel(25.0).close()


def test_nan_is_the_original_error_and_bad_samples_are_refused() -> None:
    wav = speechlike_audio(0.5, seed=3)
    wav[100] = np.nan
    with pytest.raises(AudioError, match="Mel contains nan"):
        StreamingMel(25.0).feed(wav)
    mel = StreamingMel(25.0)
    with pytest.raises(InputError, match="float32"):
        mel.feed(np.zeros(10, dtype=np.int16))
    mel.feed(np.zeros(4000, dtype=np.float32))
    mel.close()
    with pytest.raises(InputError, match="closed"):
        mel.feed(np.zeros(10, dtype=np.float32))


def test_silence_and_digital_zero_stream_like_offline() -> None:
    """All-zero audio (a muted source) and a silent stretch inside speech: the floor of -4, bit for bit."""
    speech = speechlike_audio(0.6, seed=4)
    for wav in (np.zeros(9000, dtype=np.float32), np.concatenate([speech, np.zeros(5000, np.float32), speech])):
        expected = MelChunks(melspectrogram(wav), 25.0)
        out, _ = stream(wav, 25.0, chunked(len(wav), np.random.default_rng(1), "random"))
        assert len(out) == len(expected) and all(np.array_equal(w, expected[i]) for i, w in out)
    assert np.all(MelChunks(melspectrogram(np.zeros(9000, np.float32)), 25.0)[0] == -4)
