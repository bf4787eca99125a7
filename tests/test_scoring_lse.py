"""LSE-D / LSE-C: definitions against independent re-implementations, and the --crops exact path.

The reference here is written from the scoring spec step by step (and from upstream's
``SyncNetInstance_calc_scores.evaluate``): the same ffmpeg commands and JPEG files, ``cv2.imread``
+ ``cv2.resize``, ``scipy.io.wavfile``, an MFCC written out in NumPy (not python_speech_features),
syncnet_python's ``S`` transcribed layer by layer, batches of 20, the per-window ``calc_pdist``
loop, ``torch.median`` and ``scipy.signal.medfilt``.
"""

from __future__ import annotations

import glob
import math
import os
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from scipy import signal
from scipy.io import wavfile
from torch import nn

from wav2lip_trt.ffmpeg import find_ffmpeg
from wav2lip_trt.samples import float_to_int16, speechlike_audio, talking_face_frames, write_video, write_wav
from wav2lip_trt.scoring.lse import (audio_features, lip_features, lse_scores, shifted_distances, window_count,
                                     zero_padded_medfilt)
from wav2lip_trt.scoring.media import lse_mfcc
from wav2lip_trt.random_weights import random_syncnet_v2_state_dict, save_syncnet_v2_checkpoint
from wav2lip_trt.scoring.score import ScoreOptions, score_video

pytest.importorskip("python_speech_features")
pytestmark = pytest.mark.filterwarnings("ignore:kernel_size exceeds volume extent")  # scipy's medfilt, short input


# ---------------------------------------------------------------- the reference, from the spec


def ref_mfcc(audio: np.ndarray) -> np.ndarray:
    """(T, 13) float64 MFCC of int16 samples, written from the spec's list of defaults."""
    x = audio.astype(np.float64)
    x = np.append(x[0], x[1:] - 0.97 * x[:-1])  # pre-emphasis, first sample kept
    frame, hop, nfft = 400, 160, 512
    count = 1 if len(x) <= frame else 1 + math.ceil((len(x) - frame) / hop)
    x = np.concatenate([x, np.zeros((count - 1) * hop + frame - len(x))])  # zero-padded end
    frames = np.stack([x[k * hop: k * hop + frame] for k in range(count)])  # rectangular window
    power = np.abs(np.fft.rfft(frames, nfft)) ** 2 / nfft
    energy = power.sum(axis=1)
    energy[energy == 0] = np.finfo(float).eps

    def hz2mel(hz):
        return 2595 * np.log10(1 + hz / 700.0)

    def mel2hz(mel):
        return 700 * (10 ** (mel / 2595.0) - 1)

    edges = np.floor((nfft + 1) * mel2hz(np.linspace(hz2mel(0), hz2mel(8000), 28)) / 16000)
    bank = np.zeros((26, nfft // 2 + 1))
    for j in range(26):
        lo, mid, hi = edges[j], edges[j + 1], edges[j + 2]
        for i in range(int(lo), int(mid)):
            bank[j, i] = (i - lo) / (mid - lo)
        for i in range(int(mid), int(hi)):
            bank[j, i] = (hi - i) / (hi - mid)
    feat = power @ bank.T
    feat[feat == 0] = np.finfo(float).eps
    feat = np.log(feat)
    n = feat.shape[1]  # DCT-II, orthonormal
    k = np.arange(13)[:, None]
    basis = np.cos(np.pi * k * (2 * np.arange(n)[None, :] + 1) / (2 * n)) * np.sqrt(2.0 / n)
    basis[0] /= np.sqrt(2.0)
    cep = feat @ basis.T
    cep *= 1 + 11 * np.sin(np.pi * np.arange(13) / 22)  # sinusoidal lifter 22
    cep[:, 0] = np.log(energy)  # c0 replaced by the log energy
    return cep


class RefS(nn.Module):
    """syncnet_python's ``S``, transcribed from SyncNetModel.py."""

    def __init__(self) -> None:
        super().__init__()
        self.netcnnaud = nn.Sequential(
            nn.Conv2d(1, 64, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=(1, 1), stride=(1, 1)),
            nn.Conv2d(64, 192, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)), nn.BatchNorm2d(192), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=(3, 3), stride=(1, 2)),
            nn.Conv2d(192, 384, kernel_size=(3, 3), padding=(1, 1)), nn.BatchNorm2d(384), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=(3, 3), padding=(1, 1)), nn.BatchNorm2d(256), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=(3, 3), padding=(1, 1)), nn.BatchNorm2d(256), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=(3, 3), stride=(2, 2)),
            nn.Conv2d(256, 512, kernel_size=(5, 4), padding=(0, 0)), nn.BatchNorm2d(512), nn.ReLU(),
        )
        self.netfcaud = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, 1024))
        self.netfclip = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, 1024))
        self.netcnnlip = nn.Sequential(
            nn.Conv3d(3, 96, kernel_size=(5, 7, 7), stride=(1, 2, 2), padding=0), nn.BatchNorm3d(96), nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            nn.Conv3d(96, 256, kernel_size=(1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)), nn.BatchNorm3d(256),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256), nn.ReLU(inplace=True),
            nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256), nn.ReLU(inplace=True),
            nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256), nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            nn.Conv3d(256, 512, kernel_size=(1, 6, 6), padding=0), nn.BatchNorm3d(512), nn.ReLU(inplace=True),
        )

    def forward_aud(self, x):
        mid = self.netcnnaud(x)
        return self.netfcaud(mid.view((mid.size()[0], -1)))

    def forward_lip(self, x):
        mid = self.netcnnlip(x)
        return self.netfclip(mid.view((mid.size()[0], -1)))


def ref_calc_pdist(feat1, feat2, vshift):
    win_size = vshift * 2 + 1
    feat2p = torch.nn.functional.pad(feat2, (0, 0, vshift, vshift))
    return [torch.nn.functional.pairwise_distance(feat1[[i], :].repeat(win_size, 1), feat2p[i:i + win_size, :])
            for i in range(len(feat1))]


def ref_evaluate(S: RefS, videofile: Path, workdir: Path, audiofile: Path | None = None, batch_size: int = 20,
                 vshift: int = 15) -> dict:
    """``evaluate`` step by step; ``audiofile`` replaces the video in the audio command only."""
    ffmpeg = find_ffmpeg()
    workdir.mkdir(parents=True, exist_ok=True)
    subprocess.run([ffmpeg, "-loglevel", "error", "-y", "-i", str(videofile), "-threads", "1", "-f", "image2",
                    str(workdir / "%06d.jpg")], check=True)
    subprocess.run([ffmpeg, "-loglevel", "error", "-y", "-i", str(audiofile or videofile), "-async", "1", "-ac", "1",
                    "-vn", "-acodec", "pcm_s16le", "-ar", "16000", str(workdir / "audio.wav")], check=True)
    flist = sorted(glob.glob(os.path.join(workdir, "*.jpg")))
    images = [cv2.resize(cv2.imread(f), (224, 224)) for f in flist]
    im = np.transpose(np.expand_dims(np.stack(images, axis=3), axis=0), (0, 3, 4, 1, 2))
    imtv = torch.from_numpy(im.astype(float)).float()
    sample_rate, audio = wavfile.read(os.path.join(workdir, "audio.wav"))
    mfcc = np.stack([np.array(i) for i in zip(*ref_mfcc(audio))])
    cct = torch.from_numpy(np.expand_dims(np.expand_dims(mfcc, axis=0), axis=0).astype(float)).float()
    min_length = min(len(images), math.floor(len(audio) / 640))
    lastframe = min_length - 5
    im_feat, cc_feat = [], []
    with torch.no_grad():
        for i in range(0, lastframe, batch_size):
            frames = range(i, min(lastframe, i + batch_size))
            im_feat.append(S.forward_lip(torch.cat([imtv[:, :, v:v + 5, :, :] for v in frames], 0)))
            cc_feat.append(S.forward_aud(torch.cat([cct[:, :, :, v * 4:v * 4 + 20] for v in frames], 0)))
    im_feat, cc_feat = torch.cat(im_feat, 0), torch.cat(cc_feat, 0)
    dists = ref_calc_pdist(im_feat, cc_feat, vshift)
    mdist = torch.mean(torch.stack(dists, 1), 1)
    minval, minidx = torch.min(mdist, 0)
    fdist = np.stack([dist[minidx].numpy() for dist in dists])
    fconf = torch.median(mdist).numpy() - fdist
    return {"av_offset": int(vshift - minidx), "confidence": float(torch.median(mdist) - minval),
            "min_dist": float(minval), "framewise_confidence": signal.medfilt(fconf, kernel_size=9),
            "dists": np.array([d.numpy() for d in dists]), "frames": len(images), "samples": len(audio)}


# ---------------------------------------------------------------- definitions


@pytest.mark.parametrize("length", [150, 400, 401, 561, 16000 + 77, 3 * 16000])
def test_mfcc_is_python_speech_features_as_specified(length):
    audio = float_to_int16(speechlike_audio(length / 16000 + 0.01, seed=length))[:length]
    audio[: min(length, 900)] = 0  # exact digital silence: the eps replacements
    expected = ref_mfcc(audio).T
    got = lse_mfcc(audio)
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected.astype(np.float32), rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize(("frames", "samples", "windows"), [
    (50, 32000, 45), (50, 31999, 44), (30, 32000, 25), (6, 3840, 1), (5, 99999, 0), (100, 3839, 0),
])
def test_window_count_drops_the_last_valid_window(frames, samples, windows):
    assert window_count(frames, samples) == windows


def numpy_scores(im: np.ndarray, cc: np.ndarray, vshift: int) -> dict:
    """calc_pdist + the offset/confidence lines of evaluate, in float64 NumPy."""
    n = len(im)
    pad = np.concatenate([np.zeros((vshift, cc.shape[1])), cc, np.zeros((vshift, cc.shape[1]))])
    dists = np.array([[np.sqrt(np.sum((im[i] - pad[i + m] + 1e-6) ** 2)) for m in range(2 * vshift + 1)]
                      for i in range(n)])
    mdist = dists.mean(axis=0)
    minidx = int(np.flatnonzero(mdist == mdist.min())[0])
    median = np.sort(mdist)[(len(mdist) - 1) // 2]  # the lower middle
    fconf = median - dists[:, minidx]
    return {"av_offset": vshift - minidx, "min_dist": mdist[minidx], "confidence": median - mdist[minidx],
            "dists": dists, "framewise_confidence": signal.medfilt(fconf, 9), "mean_dists": mdist}


@pytest.mark.parametrize(("n", "vshift", "true_shift"), [(23, 15, 4), (40, 15, -7), (3, 15, 0), (12, 5, 2)])
def test_scores_match_the_formulas(n, vshift, true_shift):
    rng = np.random.default_rng(n)
    base = rng.standard_normal((n + 40, 64)).astype(np.float32)
    im = base[20:20 + n]
    cc = base[20 - true_shift:20 - true_shift + n] + 0.3 * rng.standard_normal((n, 64)).astype(np.float32)
    got = lse_scores(torch.from_numpy(im), torch.from_numpy(cc), vshift)
    want = numpy_scores(im.astype(np.float64), cc.astype(np.float64), vshift)
    assert got.av_offset == want["av_offset"]
    if n > 2 * abs(true_shift):
        assert got.av_offset == -true_shift  # audio window j = i + s matches video i: offset -s
    assert got.min_dist == pytest.approx(want["min_dist"], rel=1e-5)
    assert got.confidence == pytest.approx(want["confidence"], rel=1e-4, abs=1e-5)
    np.testing.assert_allclose(got.dists, want["dists"], rtol=1e-5)
    np.testing.assert_allclose(got.mean_dists, want["mean_dists"], rtol=1e-5)
    np.testing.assert_allclose(got.framewise_confidence, want["framewise_confidence"], rtol=1e-4, atol=1e-5)
    assert got.framewise_confidence.dtype == np.float32 and got.dists.shape == (n, 2 * vshift + 1)


def test_out_of_range_shifts_measure_the_video_feature_and_ties_take_the_first():
    im = torch.ones(6, 8)
    got = lse_scores(im, torch.zeros(6, 8), 15)  # every shift measures ||v + 1e-6||: all equal
    assert got.av_offset == 15 and got.confidence == 0.0  # argmin takes the first of the ties
    assert got.min_dist == pytest.approx(np.sqrt(8) * (1 + 1e-6))
    d = shifted_distances(im, 2 * torch.ones(6, 8), 2)
    assert d[0, 0] == pytest.approx(np.sqrt(8)) and d[0, 2] == pytest.approx(np.sqrt(8))  # padded vs real row


@pytest.mark.parametrize("length", [1, 4, 9, 10, 17])
def test_zero_padded_median_filter_is_scipys(length):
    values = np.random.default_rng(length).standard_normal(length).astype(np.float32) + 3
    np.testing.assert_array_equal(zero_padded_medfilt(values, 9), signal.medfilt(values, 9))
    assert zero_padded_medfilt(np.ones(9, np.float32), 9)[0] == 1.0  # 4 zeros + 5 ones: the middle is a one
    assert zero_padded_medfilt(np.ones(3, np.float32), 9)[0] == 0.0  # 6 zeros + 3 ones: pulled to 0


# ---------------------------------------------------------------- window construction and offset sign


class CodeNet(torch.nn.Module):
    """A stand-in for syncnet_python's network that reads a 1-bit code per frame from each side.

    Lip side: mean brightness of each of the 5 frames of a window; audio side: log energy (MFCC c0)
    of each frame's first column. Equal codes give distance 0, so the best shift is the
    true alignment, whatever the trained network would say.
    """

    def forward_lip(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1:] == (3, 5, 224, 224)
        return (x.mean(dim=(1, 3, 4)) > 128).float()

    def forward_aud(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1:] == (1, 13, 20)
        return (x[:, 0, 0, ::4] > 19).float()  # column 4t covers samples 640t..640t+399: frame t only


def coded_media(codes: np.ndarray, audio_delay: int) -> tuple[list[np.ndarray], np.ndarray]:
    """224x224 frames bright where the code is 1, and audio loud where the code of frame t - delay is 1."""
    frames = [np.full((224, 224, 3), 200 if c else 40, np.uint8) for c in codes]
    rng = np.random.default_rng(0)
    shifted = np.roll(codes, audio_delay)
    amplitude = np.repeat(np.where(shifted, 8000.0, 50.0), 640)
    return frames, np.round(amplitude * rng.standard_normal(amplitude.size)).astype(np.int16)


@pytest.mark.parametrize("delay", [-4, 0, 3])
def test_window_construction_and_offset_sign(delay):
    codes = np.random.default_rng(7).integers(0, 2, 60)
    frames, audio = coded_media(codes, delay)
    net = CodeNet()
    n = window_count(len(frames), len(audio))
    result = lse_scores(lip_features(net, frames, n, batch_size=7), audio_features(net, lse_mfcc(audio), n, 7))
    assert result.av_offset == -delay  # delaying the audio by 3 frames gives -3: the audio lags
    inside = slice(max(0, -delay), n - max(0, delay))  # video windows i whose audio window i + delay exists
    assert result.dists[inside, 15 + delay].max() == pytest.approx(0.0, abs=1e-5)


# ---------------------------------------------------------------- the exact path


@pytest.fixture(scope="module")
def syncnet(tmp_path_factory) -> tuple[Path, RefS]:
    state = random_syncnet_v2_state_dict(seed=3)
    path = save_syncnet_v2_checkpoint(tmp_path_factory.mktemp("lse") / "syncnet_v2.model", state)
    ref = RefS()
    ref.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))  # the upstream way
    return path, ref.eval()


def crop_clip(folder: Path, size: int, frames: int, seconds: float, own_audio: bool) -> tuple[Path, Path]:
    """A face-crop mp4 (H.264, with an AAC track if ``own_audio``) and a WAV of ``seconds``."""
    wav = write_wav(folder / "speech.wav", float_to_int16(speechlike_audio(seconds, seed=size)), 16000)
    video = write_video(folder / "crop.mp4", talking_face_frames(frames, size, size, seed=size), 25.0,
                        audio=wav if own_audio else None)
    return video, wav


@pytest.mark.parametrize(("size", "frames", "seconds", "own_audio"), [
    (224, 30, 1.2, True),  # the usual crop clip: its own AAC track, as long as the video
    (176, 26, 0.9, False),  # hard-coded resize to 224, --audio WAV shorter than the video (silently cut)
])
def test_crops_path_reproduces_evaluate(tmp_path, syncnet, size, frames, seconds, own_audio):
    checkpoint, ref_net = syncnet
    video, wav = crop_clip(tmp_path, size, frames, seconds, own_audio)
    audio = None if own_audio else wav
    want = ref_evaluate(ref_net, video, tmp_path / "ref", audio)
    report = score_video(ScoreOptions(video=video, audio=audio, syncnet_checkpoint=checkpoint, crops=True,
                                      device="cpu"))
    got = report.clips[0].lse
    assert (report.frames, report.audio_samples) == (want["frames"], want["samples"])
    assert got.windows == min(want["frames"], want["samples"] // 640) - 5
    assert got.av_offset == want["av_offset"]
    assert abs(got.min_dist - want["min_dist"]) < 1e-3
    assert abs(got.confidence - want["confidence"]) < 1e-3
    np.testing.assert_allclose(got.dists, want["dists"], atol=1e-4)
    np.testing.assert_allclose(got.framewise_confidence, want["framewise_confidence"], atol=1e-3)
    lse = report.to_json()["lse"]
    assert set(lse) >= {"av_offset", "min_dist", "confidence", "framewise_confidence", "dists"}
    assert len(lse["dists"]) == got.windows and len(lse["dists"][0]) == 31


def test_crops_path_sign_end_to_end(tmp_path, monkeypatch):
    """A coded crop clip through ffmpeg, JPEG and AAC-free WAV: delaying the audio 3 frames gives -3."""
    codes = np.random.default_rng(11).integers(0, 2, 40)
    frames, audio = coded_media(codes, 3)
    video = write_video(tmp_path / "coded.mp4", frames, 25.0)
    wav = write_wav(tmp_path / "coded.wav", audio, 16000)
    monkeypatch.setattr("wav2lip_trt.checkpoints.load_network", lambda key, path, device="cpu": CodeNet())
    report = score_video(ScoreOptions(video=video, audio=wav, syncnet_checkpoint=wav, crops=True, device="cpu"))
    assert report.clips[0].lse.av_offset == -3
