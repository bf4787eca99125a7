"""Audio decoding, mel spectrogram and mel chunks against independent references.

The references are librosa 0.11 / scipy with the original's settings spelled out (reflect
padding, complex64 STFT, float32 dB), and a literal transcription of the original chunk loop.
"""

from __future__ import annotations

import numpy as np
import pytest

from wav2lip_trt import audio
from wav2lip_trt.audio import MelChunks, load_audio, melspectrogram, mel_filters
from wav2lip_trt.errors import AudioError, InputError

from media import (
    encode_audio, float_to_int16, make_sine, make_speechlike_audio, make_video, run_ffmpeg, write_wav,
)  # fmt: skip

librosa = pytest.importorskip("librosa")
signal = pytest.importorskip("scipy.signal")

pytestmark = pytest.mark.filterwarnings("ignore:'(aifc|audioop|sunau)' is deprecated:DeprecationWarning")

FPS_NTSC = 30000 / 1001  # what OpenCV reports for 29.97 fps video: 29.97002997002997


def reference_mel(wav: np.ndarray, pad_mode: str = "reflect") -> np.ndarray:
    """The spec's chain with librosa 0.11 + scipy, each setting that changed since 0.7 given explicitly."""
    emphasized = signal.lfilter([1, -0.97], [1], wav)
    stft = librosa.stft(
        y=emphasized, n_fft=800, hop_length=200, win_length=800, window="hann",
        center=True, pad_mode=pad_mode, dtype=np.complex64,
    )  # fmt: skip
    basis = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600)
    mel = np.dot(basis, np.abs(stft))
    min_level = np.float32(np.exp(-100 / 20 * np.log(10)))
    db = 20 * np.log10(np.maximum(min_level, mel)) - 20
    return np.clip(8.0 * ((db + 100) / 100) - 4.0, -4.0, 4.0)


def reference_chunks(mel: np.ndarray, fps: float) -> list[np.ndarray]:
    """The original inference loop, transcribed literally."""
    chunks = []
    mult = 80.0 / fps
    i = 0
    while True:
        start = int(i * mult)
        if start + 16 > len(mel[0]):
            chunks.append(mel[:, len(mel[0]) - 16 :])
            break
        chunks.append(mel[:, start : start + 16])
        i += 1
    return chunks


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return make_speechlike_audio(3.0, 16000, seed=1)


# --- mel spectrogram -------------------------------------------------------------------------


def test_mel_filters_match_librosa():
    ours = mel_filters()
    ref = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600)
    assert ours.shape == (80, 401) and ours.dtype == np.float32
    assert np.array_equal(ours == 0, ref == 0)
    np.testing.assert_allclose(ours, ref, rtol=1e-7, atol=0)
    assert mel_filters() is ours and not ours.flags.writeable


def test_window_is_scipy_periodic_hann():
    assert np.array_equal(audio._hann_window(), signal.get_window("hann", 800, fftbins=True))


@pytest.mark.parametrize("n", [1, 2, 3, 399, 400, 401, 402, 801, 16007])
def test_preemphasis_and_padding_bit_identical(n):
    wav = np.random.default_rng(n).uniform(-1, 1, n).astype(np.float32)
    expected = np.pad(signal.lfilter([1, -0.97], [1], wav), 400, mode="reflect")
    ours = audio._preemphasized_padded(wav)
    assert ours.dtype == np.float64
    assert np.array_equal(ours, expected)


@pytest.mark.parametrize("kind", ["speech", "sine", "silence_then_speech"])
def test_melspectrogram_matches_reference(kind, speech):
    wav = {
        "speech": speech,
        "sine": make_sine(1.0, 16000, freq=440.0, amplitude=0.5),
        "silence_then_speech": np.concatenate([np.zeros(4000, np.float32), speech[:12345]]),
    }[kind]
    mel = melspectrogram(wav)
    ref = reference_mel(wav)
    assert mel.dtype == np.float32 and ref.dtype == np.float32
    assert mel.shape == ref.shape == (80, 1 + len(wav) // 200)
    assert np.array_equal(mel, ref)  # the original's bits: its one filterbank product over every column
    assert mel.min() >= -4 and mel.max() <= 4
    assert mel.std() > 0.5  # real content, not a clipped constant


@pytest.mark.parametrize("columns", [16, 17, 2048, 2049, 2048 + 2047, 3 * 2048])
def test_melspectrogram_equals_the_original_bit_for_bit(columns):
    """Products of FILTERBANK_COLUMNS (the last one overlapping) give the bits of the original's one product."""
    wav = make_speechlike_audio((columns - 1) * 200 / 16000, 16000, seed=columns)
    mel = melspectrogram(wav)
    assert mel.shape == (80, columns)
    assert np.array_equal(mel, reference_mel(wav))


@pytest.mark.parametrize("n", [1, 199, 200, 201, 2999, 3000, 3199, 16000])
def test_mel_frame_count(n):
    wav = np.random.default_rng(n).uniform(-0.5, 0.5, n).astype(np.float32)
    assert melspectrogram(wav).shape == (80, 1 + n // 200)


def test_reflect_padding_not_librosa_default(speech):
    """librosa >= 0.9 zero-pads by default, which changes the first and last two columns."""
    wav = speech[:8000] + np.float32(0.2)
    ours = melspectrogram(wav)
    zero_padded = reference_mel(wav, pad_mode="constant")
    edges = [0, 1, -2, -1]
    assert np.abs(ours[:, edges] - zero_padded[:, edges]).max() > 0.05
    np.testing.assert_allclose(ours[:, 2:-2], zero_padded[:, 2:-2], rtol=0, atol=1e-5)


def test_nan_gives_the_original_message(speech):
    wav = speech.copy()
    wav[1000] = np.nan
    with pytest.raises(AudioError) as info:
        melspectrogram(wav)
    assert str(info.value) == (
        "Mel contains nan! Using a TTS voice? Add a small epsilon noise to the wav file and try again"
    )


def test_empty_waveform_is_an_audio_error():
    with pytest.raises(AudioError, match="empty"):
        melspectrogram(np.zeros(0, np.float32))


# --- mel chunks ------------------------------------------------------------------------------


def _numbered_mel(n_cols: int) -> np.ndarray:
    """Every value unique, so equal chunks mean equal positions."""
    return np.arange(80 * n_cols, dtype=np.float32).reshape(80, n_cols)


@pytest.mark.parametrize("fps", [25.0, FPS_NTSC, 30.0, 24000 / 1001, 24.0, 60.0, 100.0, 7.5])
def test_chunks_follow_the_reference_loop(fps):
    for n_cols in [*range(16, 260), 1000, 2881, 4801]:
        mel = _numbered_mel(n_cols)
        expected = reference_chunks(mel, fps)
        chunks = MelChunks(mel, fps)
        assert len(chunks) == len(expected), (fps, n_cols)
        starts = chunks.starts()
        assert starts.dtype == np.int64
        assert [int(c[0, 0]) for c in expected] == starts.tolist(), (fps, n_cols)
        assert np.array_equal(chunks[-1], expected[-1]) and np.array_equal(chunks[0], expected[0])


def test_chunk_example_from_the_spec():
    mel = _numbered_mel(145)
    chunks = MelChunks(mel, 25)
    assert len(chunks) == 42
    assert chunks.starts()[-2:].tolist() == [128, 129]  # int(40 * 3.2) = 128, then the last 16 columns
    assert np.array_equal(chunks[41], mel[:, 129:])


def test_truncation_is_the_float_expression():
    """At 23.976 fps, int(i * (80. / fps)) falls one column short of exact arithmetic for some
    frames (i = 300: 1000, not 1001); the float product is the contract."""
    fps = 24000 / 1001
    mult = 80.0 / fps
    chunks = MelChunks(_numbered_mel(80 * 600), fps)
    i = np.arange(len(chunks) - 1)
    assert chunks.starts()[:-1].tolist() == [int(k * mult) for k in i.tolist()]
    exact = (i * 80 * 1001) // 24000
    assert chunks.starts()[300] == 1000 and exact[300] == 1001
    assert np.count_nonzero(chunks.starts()[:-1] != exact) > 10


def test_chunks_are_views_and_gather_stacks():
    mel = _numbered_mel(300)
    chunks = MelChunks(mel, FPS_NTSC)
    chunk = chunks[5]
    assert chunk.shape == (80, 16) and chunk.dtype == np.float32 and np.shares_memory(chunk, mel)
    picked = [0, 7, 7, len(chunks) - 1, -1, 3]
    batch = chunks.gather(picked)
    assert batch.shape == (6, 80, 16) and batch.dtype == np.float32 and batch.flags.c_contiguous
    assert np.array_equal(batch, np.stack([chunks[i] for i in picked]))
    assert not np.shares_memory(batch, mel)
    assert chunks.gather([]).shape == (0, 80, 16)
    assert [c.shape for c in chunks[:3]] == [(80, 16)] * 3
    with pytest.raises(IndexError):
        chunks[len(chunks)]


def test_chunks_of_a_real_mel(speech):
    mel = melspectrogram(speech)
    expected = reference_chunks(mel, 25.0)
    chunks = MelChunks(mel, 25.0)
    assert np.array_equal(chunks.gather(range(len(chunks))), np.stack(expected))


def test_hour_of_chunks_is_lazy():
    mel = np.zeros((80, 1 + 3600 * 16000 // 200), np.float32)
    chunks = MelChunks(mel, FPS_NTSC)
    assert len(chunks) == len(reference_chunks(mel, FPS_NTSC))
    assert chunks.starts().nbytes < 1_000_000


def test_too_short_for_one_chunk():
    with pytest.raises(AudioError, match="too short"):
        MelChunks(_numbered_mel(15), 25)
    assert len(MelChunks(_numbered_mel(16), 25)) == 2  # the original repeats the only window


@pytest.mark.parametrize("fps", [0, -25, float("nan"), float("inf")])
def test_bad_fps(fps):
    with pytest.raises(InputError, match="fps"):
        MelChunks(_numbered_mel(100), fps)


# --- load_audio ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("audio")


def test_load_int16_wav_is_bit_exact(media_dir, speech):
    pcm = float_to_int16(speech)
    path = write_wav(media_dir / "mono16k.wav", pcm, 16000)
    wav = load_audio(path)
    assert wav.dtype == np.float32 and wav.shape == pcm.shape
    assert np.array_equal(wav, pcm.astype(np.float32) / 32768)
    assert np.array_equal(wav, librosa.load(path, sr=16000)[0])


def test_load_float_wav_as_is(media_dir, speech):
    path = write_wav(media_dir / "float.wav", speech, 16000)
    assert np.array_equal(load_audio(path), speech)


@pytest.mark.parametrize("channels", [2, 6])
def test_load_multichannel_takes_the_channel_mean(media_dir, speech, channels):
    """6 channels also exercise ffmpeg's WAVE_FORMAT_EXTENSIBLE header."""
    pcm = np.stack([float_to_int16(speech * (1 - 0.15 * c)) for c in range(channels)], axis=1)
    path = write_wav(media_dir / f"ch{channels}.wav", pcm, 16000)
    wav = load_audio(path)
    assert np.array_equal(wav, np.mean(pcm.T.astype(np.float32) / 32768, axis=0))
    assert np.array_equal(wav, librosa.load(path, sr=16000, mono=True)[0])


def test_load_resamples_44k1(media_dir):
    n = 44100 + 4410 + 7
    pcm = float_to_int16(make_speechlike_audio(n / 44100, 44100, seed=5))[:n]
    path = write_wav(media_dir / "cd.wav", np.stack([pcm, pcm // 2], axis=1), 44100)
    wav = load_audio(path)
    assert wav.dtype == np.float32 and wav.shape == (int(np.ceil(n * 16000 / 44100)),)
    assert np.array_equal(wav, librosa.load(path, sr=16000)[0])  # librosa 0.11: soxr_hq


def _via_temp_wav(src, tmp_dir) -> np.ndarray:
    """What the original did for a non-.wav input: ffmpeg -i X temp.wav, then librosa.load."""
    temp = tmp_dir / f"{src.name}.temp.wav"
    run_ffmpeg("-i", src, "-strict", "-2", temp)
    return librosa.load(temp, sr=16000)[0]


def test_load_mp3_goes_through_int16(media_dir, speech):
    src = write_wav(media_dir / "for_mp3.wav", float_to_int16(speech), 16000)
    mp3 = encode_audio(src, media_dir / "speech.mp3", "-c:a", "libmp3lame", "-b:a", "64k")
    wav = load_audio(mp3)
    assert wav.dtype == np.float32 and abs(len(wav) - len(speech)) < 2000
    assert np.array_equal(wav * 32768, np.round(wav * 32768))
    assert np.array_equal(wav, _via_temp_wav(mp3, media_dir))


def test_uppercase_wav_is_not_read_as_is(media_dir, speech):
    """The original only skips ffmpeg for names ending in lower-case '.wav'."""
    path = write_wav(media_dir / "FLOAT.WAV", speech, 16000)
    wav = load_audio(path)
    assert not np.array_equal(wav, speech)
    assert np.array_equal(wav * 32768, np.round(wav * 32768))
    np.testing.assert_allclose(wav, speech, atol=1 / 32768)


def test_load_audio_track_of_an_mp4(media_dir, speech):
    src = write_wav(media_dir / "for_mp4.wav", float_to_int16(speech[:32000]), 16000)
    mp4 = make_video(media_dir / "talk.mp4", seconds=2.0, fps=25, audio=src, audio_codec="aac")
    wav = load_audio(mp4)
    assert wav.dtype == np.float32 and abs(len(wav) - 32000) < 2048
    assert np.array_equal(wav * 32768, np.round(wav * 32768))
    assert np.array_equal(wav, _via_temp_wav(mp4, media_dir))
    assert np.corrcoef(wav[:30000], speech[:30000])[0, 1] > 0.9


def test_missing_file(tmp_path):
    path = tmp_path / "nope.wav"
    with pytest.raises(AudioError, match="nope.wav"):
        load_audio(path)


def test_video_without_audio(media_dir):
    mp4 = make_video(media_dir / "silent_film.mp4", seconds=0.4, fps=25)
    with pytest.raises(AudioError, match="silent_film.mp4.*no audio stream"):
        load_audio(mp4)


def test_text_file_named_wav(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio\n")
    with pytest.raises(AudioError, match="notes.wav"):
        load_audio(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.wav"]  # nothing written beside it


def test_empty_wav(tmp_path):
    path = write_wav(tmp_path / "empty.wav", np.zeros(0, np.int16), 16000)
    with pytest.raises(AudioError, match="empty.wav"):
        load_audio(path)


def test_parse_wav_skips_extra_chunks():
    fmt = b"fmt " + (18).to_bytes(4, "little") + bytes.fromhex("0300 0200 44ac0000 20620500 0800 2000 0000")
    listing = b"LIST" + (5).to_bytes(4, "little") + b"INFOx" + b"\0"  # odd size: padded
    data = np.arange(8, dtype="<f4").tobytes()
    stream = b"RIFF\xff\xff\xff\xffWAVE" + fmt + listing + b"data\xff\xff\xff\xff" + data
    channels, rate, bits, payload = audio._parse_wav(stream)
    assert (channels, rate, bits) == (2, 44100, 32)
    assert bytes(payload) == data
