"""The expert's and the discriminator's scores: the original's formulation, window layout, offset sign."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wav2lip_trt.models import Wav2LipDiscQual
from wav2lip_trt.models.conv import Conv2d
from wav2lip_trt.random_weights import random_disc_qual_state_dict
from wav2lip_trt.scoring.expert import expert_windows, faces_to_uint8, faces_to_unit
from wav2lip_trt.models import SyncNetColor
from wav2lip_trt.scoring.online import OnlineScorer
from wav2lip_trt.random_weights import random_expert_state_dict


class RefSyncNetColor(nn.Module):
    """Wav2Lip's models/syncnet.py ``SyncNet_color``, transcribed (with its forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.face_encoder = nn.Sequential(
            Conv2d(15, 32, kernel_size=(7, 7), stride=1, padding=3),
            Conv2d(32, 64, kernel_size=5, stride=(1, 2), padding=1),
            Conv2d(64, 64, kernel_size=3, stride=1, padding=1, residual=True),
            Conv2d(64, 64, kernel_size=3, stride=1, padding=1, residual=True),
            Conv2d(64, 128, kernel_size=3, stride=2, padding=1),
            Conv2d(128, 128, kernel_size=3, stride=1, padding=1, residual=True),
            Conv2d(128, 128, kernel_size=3, stride=1, padding=1, residual=True),
            Conv2d(128, 128, kernel_size=3, stride=1, padding=1, residual=True),
            Conv2d(128, 256, kernel_size=3, stride=2, padding=1),
            Conv2d(256, 256, kernel_size=3, stride=1, padding=1, residual=True),
            Conv2d(256, 256, kernel_size=3, stride=1, padding=1, residual=True),
            Conv2d(256, 512, kernel_size=3, stride=2, padding=1),
            Conv2d(512, 512, kernel_size=3, stride=1, padding=1, residual=True),
            Conv2d(512, 512, kernel_size=3, stride=1, padding=1, residual=True),
            Conv2d(512, 512, kernel_size=3, stride=2, padding=1),
            Conv2d(512, 512, kernel_size=3, stride=1, padding=0),
            Conv2d(512, 512, kernel_size=1, stride=1, padding=0))
        self.audio_encoder = nn.Sequential(
            Conv2d(1, 32, kernel_size=3, stride=1, padding=1),
            Conv2d(32, 32, kernel_size=3, stride=1, padding=1, residual=True),
            Conv2d(32, 32, kernel_size=3, stride=1, padding=1, residual=True),
            Conv2d(32, 64, kernel_size=3, stride=(3, 1), padding=1),
            Conv2d(64, 64, kernel_size=3, stride=1, padding=1, residual=True),
            Conv2d(64, 64, kernel_size=3, stride=1, padding=1, residual=True),
            Conv2d(64, 128, kernel_size=3, stride=3, padding=1),
            Conv2d(128, 128, kernel_size=3, stride=1, padding=1, residual=True),
            Conv2d(128, 128, kernel_size=3, stride=1, padding=1, residual=True),
            Conv2d(128, 256, kernel_size=3, stride=(3, 2), padding=1),
            Conv2d(256, 256, kernel_size=3, stride=1, padding=1, residual=True),
            Conv2d(256, 256, kernel_size=3, stride=1, padding=1, residual=True),
            Conv2d(256, 512, kernel_size=3, stride=1, padding=0),
            Conv2d(512, 512, kernel_size=1, stride=1, padding=0))

    def forward(self, audio_sequences, face_sequences):
        face_embedding = self.face_encoder(face_sequences)
        audio_embedding = self.audio_encoder(audio_sequences)
        audio_embedding = audio_embedding.view(audio_embedding.size(0), -1)
        face_embedding = face_embedding.view(face_embedding.size(0), -1)
        return F.normalize(audio_embedding, p=2, dim=1), F.normalize(face_embedding, p=2, dim=1)


def cosine_loss(a, v, y):
    """color_syncnet_train.py's loss."""
    d = nn.functional.cosine_similarity(a, v)
    return nn.BCELoss()(d.unsqueeze(1), y)


@pytest.fixture(scope="module")
def expert_state():
    return random_expert_state_dict(seed=2)


@pytest.fixture(scope="module")
def expert(expert_state) -> SyncNetColor:
    model = SyncNetColor()
    model.load_state_dict(expert_state)
    return model.eval()


@pytest.fixture(scope="module")
def disc() -> Wav2LipDiscQual:
    model = Wav2LipDiscQual()
    model.load_state_dict(random_disc_qual_state_dict(seed=2))
    return model.eval()


@pytest.fixture(scope="module")
def generated():
    """Generator-like outputs: (N, 3, 96, 96) float32 in [0, 1] with smooth structure, and mel chunks."""
    rng = np.random.default_rng(5)
    n = 16
    yy, xx = np.mgrid[0:96, 0:96] / 96.0
    pred = np.stack([np.stack([0.5 + 0.4 * np.sin(6 * yy * (1 + c) + i * 0.7 + xx * 3) for c in range(3)])
                     for i in range(n)]).astype(np.float32)
    pred += rng.uniform(0, 0.05, pred.shape).astype(np.float32)
    mel = rng.uniform(-4, 4, (n, 80, 16)).astype(np.float32)
    return np.clip(pred, 0, 1), mel


def test_uint8_step_truncates_like_the_paste():
    pred = np.array([0.0, 0.5, 0.999, 1.0, 0.0039215, 0.3], np.float32).reshape(1, 1, 1, 6).repeat(3, 1)
    pred = np.broadcast_to(pred.reshape(1, 3, 1, 6), (1, 3, 96, 6))
    pred = np.pad(pred, ((0, 0), (0, 0), (0, 0), (0, 90)))
    faces = faces_to_uint8(pred)
    assert faces.shape == (1, 96, 96, 3) and faces.dtype == np.uint8
    expected = (pred.transpose(0, 2, 3, 1) * 255.).astype(np.uint8)  # inference.py's expression
    np.testing.assert_array_equal(faces, expected)
    assert list(faces[0, 0, :6, 0]) == [0, 127, 254, 255, 0, 76]  # truncated, not rounded


def test_window_layout_is_time_major_bgr_lower_half():
    faces = np.zeros((7, 96, 96, 3), np.uint8)
    for t in range(7):
        for c in range(3):
            faces[t, :, :, c] = 10 * t + c
    faces[:, :48] = 255  # the upper half must not appear
    windows = expert_windows(faces_to_unit(faces)[:, :, 48:])
    assert windows.shape == (3, 15, 48, 96)
    for i in range(3):
        for t in range(5):
            for c in range(3):
                assert torch.all(windows[i, 3 * t + c] == np.float32((10 * (i + t) + c) / 255.))


def original_windows(faces_u8: np.ndarray) -> torch.Tensor:
    """wav2lip_train.get_sync_loss's layout on g = (B, 3, T, H, W), one window per batch row."""
    g = torch.from_numpy(faces_u8 / 255.).float().permute(3, 0, 1, 2)  # (3, N, 96, 96)
    rows = []
    for i in range(faces_u8.shape[0] - 4):
        w = g[None, :, i:i + 5]  # (1, 3, 5, H, W)
        w = w[:, :, :, w.size(3) // 2:]
        rows.append(torch.cat([w[:, :, t] for t in range(w.size(2))], dim=1))
    return torch.cat(rows)


def test_similarity_and_loss_are_the_originals(expert_state, expert, generated):
    pred, mel = generated
    scorer = OnlineScorer(expert)
    scorer.add(np.arange(len(pred)), pred, mel)
    report = scorer.expert_report(len(pred))
    ref = RefSyncNetColor()
    ref.load_state_dict(expert_state)
    ref.eval()
    windows = original_windows(faces_to_uint8(pred))
    with torch.no_grad():
        a, v = ref(torch.from_numpy(mel[:len(windows)])[:, None], windows)
        d = F.cosine_similarity(a, v)
        loss = cosine_loss(a, v, torch.ones(len(windows), 1))
    assert len(report.similarity) == len(pred) - 4
    np.testing.assert_allclose(report.similarity, d.numpy(), atol=1e-6)
    assert report.sync_loss == pytest.approx(float(loss), abs=1e-6)
    assert all(0 <= s <= 1 for s in report.similarity)


def test_offset_curve_against_the_formula(expert, generated):
    pred, mel = generated
    n = len(pred)
    scorer = OnlineScorer(expert)
    for start in range(0, n, 6):  # batches that split windows
        scorer.add(np.arange(start, min(n, start + 6)), pred[start:start + 6], mel[start:start + 6])
    report = scorer.expert_report(n)
    with torch.no_grad():
        v = expert.embed_face(expert_windows(faces_to_unit(faces_to_uint8(pred))[:, :, 48:]))
        a = expert.embed_audio(torch.from_numpy(mel)[:, None])
    for m, k in enumerate(range(-15, 16)):
        pairs = [(i, i + k) for i in range(n - 4) if 0 <= i + k <= n - 1]
        assert report.offset_counts[m] == len(pairs)
        if not pairs:
            assert report.offset_curve[m] is None
            continue
        want = np.mean([float(F.cosine_similarity(v[i:i + 1], a[j:j + 1])) for i, j in pairs])
        assert report.offset_curve[m] == pytest.approx(want, abs=1e-6)
    curve = [-np.inf if c is None else c for c in report.offset_curve]
    assert report.av_offset == -(int(np.argmax(curve)) - 15)


class CodeExpert(nn.Module):
    """Reads one bit per frame: face brightness per time step, and mel energy per 16/5 columns."""

    def embed_face(self, x: torch.Tensor) -> torch.Tensor:
        bits = (x.reshape(x.shape[0], 5, 3, -1).mean(dim=(2, 3)) > 0.5).float()
        return F.normalize(torch.cat([bits, 1 - bits], dim=1), dim=1)

    def embed_audio(self, mel: torch.Tensor) -> torch.Tensor:
        bits = (mel[:, 0, :, [1, 5, 8, 11, 14]].mean(dim=1) > 0).float()
        return F.normalize(torch.cat([bits, 1 - bits], dim=1), dim=1)


@pytest.mark.parametrize("delay", [-3, 0, 3])
def test_offset_sign(delay):
    codes = np.random.default_rng(1).integers(0, 2, 50)
    faces = np.where(codes[:, None, None, None], 220, 30).astype(np.uint8) * np.ones((1, 96, 96, 3), np.uint8)
    audio_codes = np.roll(codes, delay)  # audio frame t carries the code of video frame t - delay
    per_frame = np.where(audio_codes, 2.0, -2.0).astype(np.float32)
    mel = np.stack([np.repeat(np.pad(per_frame, (0, 5))[i:i + 5], [4, 3, 3, 3, 3])[None].repeat(80, 0)
                    for i in range(len(codes))])  # chunk i: frames i..i+4 over its 16 columns
    scorer = OnlineScorer(CodeExpert())  # type: ignore[arg-type]
    scorer.add(np.arange(len(codes)), faces, mel)
    assert scorer.expert_report(len(codes)).av_offset == -delay  # audio delayed by 3 frames: -3


def test_quality_is_the_discriminators_forward(disc, generated):
    pred, mel = generated
    scorer = OnlineScorer(disc=disc, batch_size=5)
    scorer.add(np.arange(len(pred)), pred, None)
    report = scorer.quality_report(len(pred))
    unit = faces_to_unit(faces_to_uint8(pred))
    b, t = 3, 5
    seq = unit[: b * t].reshape(t, b, 3, 96, 96).permute(1, 2, 0, 3, 4)  # (B, 3, T, H, W): output row t*B + b
    with torch.no_grad():
        x = torch.cat([seq[:, :, i] for i in range(seq.size(2))], dim=0)  # to_2d
        x = x[:, :, x.size(2) // 2:]  # get_lower_half on the 4-D tensor: rows 48-95
        for block in disc.face_encoder_blocks:
            x = block(x)
        want = disc.binary_pred(x).view(len(x), -1)[:, 0].numpy()
        whole = disc(seq)[:, 0].numpy()
    np.testing.assert_allclose(report.per_frame[: b * t], want, atol=1e-6)
    np.testing.assert_allclose(whole, want, atol=1e-6)
    assert report.mean == pytest.approx(float(np.mean(report.per_frame)))
    assert report.perceptual_loss == pytest.approx(-float(np.mean(np.log(report.per_frame))), rel=1e-6)


def test_batches_gaps_and_report_keys(expert, disc, generated):
    pred, mel = generated
    keep = [i for i in range(len(pred)) if i not in (9, 10)]  # two frames without a generated face
    whole = OnlineScorer(expert, disc)
    whole.add(keep, pred[keep], mel[keep])
    split = OnlineScorer(expert, disc, batch_size=3)
    for part in (keep[:4], keep[4:5], keep[5:13], keep[13:]):
        split.add(part, faces_to_uint8(pred[part]), mel[part])  # uint8 faces work as well
    a, b = whole.report(len(pred)), split.report(len(pred))
    assert set(a) == {"expert", "visual_quality"}
    assert {"sync_loss", "similarity", "av_offset", "offset_curve"} <= set(a["expert"])
    assert {"per_frame", "mean"} <= set(a["visual_quality"])
    sim = a["expert"]["similarity"]
    assert len(sim) == len(pred) - 4 and [i for i, s in enumerate(sim) if s is None] == [5, 6, 7, 8, 9, 10]
    assert a["visual_quality"]["per_frame"][9] is None and len(a["visual_quality"]["per_frame"]) == len(pred)
    np.testing.assert_allclose([s for s in sim if s is not None],
                               [s for s in b["expert"]["similarity"] if s is not None], atol=1e-6)
    def curve(r):
        return [np.nan if c is None else c for c in r["expert"]["offset_curve"]]

    np.testing.assert_allclose(curve(a), curve(b), atol=1e-6)
    assert a["expert"]["offset_counts"] == b["expert"]["offset_counts"]
    assert len(split._face) <= 16 and len(split._audio) <= 20 and len(split._lower) <= 4  # bounded memory


def test_misuse_is_a_value_error(expert, generated):
    pred, mel = generated
    scorer = OnlineScorer(expert)
    scorer.add([0, 1], pred[:2], mel[:2])
    with pytest.raises(ValueError, match="increase"):
        scorer.add([1, 2], pred[:2], mel[:2])
    with pytest.raises(ValueError, match="mel"):
        scorer.add([5], pred[:1], None)
    with pytest.raises(ValueError):
        OnlineScorer()


def test_from_checkpoints_and_summary(tmp_path, expert_state, generated):
    from wav2lip_trt.errors import CheckpointError, InputError
    from wav2lip_trt.random_weights import save_wav2lip_checkpoint
    from wav2lip_trt.scoring.online import summary

    path = save_wav2lip_checkpoint(tmp_path / "lipsync_expert.pth", expert_state)
    scorer = OnlineScorer.from_checkpoints(path)
    pred, mel = generated
    scorer.add(np.arange(8), pred[:8], mel[:8])
    line = summary(scorer.report())
    assert line.startswith("expert sync loss ") and ", similarity 0." in line and ", offset " in line
    assert "quality" not in line
    with pytest.raises(InputError, match="--expert-checkpoint"):
        OnlineScorer.from_checkpoints(None)
    with pytest.raises(CheckpointError, match="looks like a lip-sync expert"):
        OnlineScorer.from_checkpoints(None, path)  # the expert given as the discriminator
