"""Network structure (keys, shapes, wiring) and random-weight behaviour."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from wav2lip_trt.models import S3FD, L2Norm, Wav2Lip, Wav2LipDiscQual
from wav2lip_trt.models.conv import Conv2d
from wav2lip_trt.random_weights import (
    random_disc_qual_state_dict,
    random_s3fd_state_dict,
    random_wav2lip_state_dict,
)

DATA = Path(__file__).parent / "data"
S3FD_MEAN_RGB = np.array([104, 117, 123], np.float32)


def on_meta(cls: type[torch.nn.Module]) -> torch.nn.Module:
    with torch.device("meta"):
        return cls()


@pytest.fixture(scope="module")
def wav2lip() -> Wav2Lip:
    model = Wav2Lip().eval()
    model.load_state_dict(random_wav2lip_state_dict(seed=0))
    return model


@pytest.fixture(scope="module")
def s3fd() -> S3FD:
    model = S3FD().eval()
    model.load_state_dict(random_s3fd_state_dict(seed=0))
    return model


def cartoon_face(rng: np.random.Generator, height: int = 128, width: int = 160) -> np.ndarray:
    """BGR uint8: a skin-coloured ellipse with eyes and a mouth on a noisy background."""
    frame = np.full((height, width, 3), rng.integers(20, 235, 3), np.uint8)
    frame = np.clip(frame + rng.integers(-15, 16, frame.shape), 0, 255).astype(np.uint8)
    cx, cy = int(width * rng.uniform(0.35, 0.65)), int(height * rng.uniform(0.4, 0.6))
    ax, ay = int(height * rng.uniform(0.2, 0.3)), int(height * rng.uniform(0.25, 0.35))
    skin = tuple(int(v) for v in (rng.integers(90, 140), rng.integers(130, 170), rng.integers(180, 230)))
    cv2.ellipse(frame, (cx, cy), (ax, ay), 0, 0, 360, skin, -1)
    for side in (-1, 1):
        cv2.circle(frame, (cx + side * ax // 2, cy - ay // 4), 4, (30, 30, 30), -1)
    cv2.ellipse(frame, (cx, cy + ay // 2), (ax // 3, 5), 0, 0, 360, (60, 60, 170), -1)
    return frame


def s3fd_input(frames: np.ndarray) -> torch.Tensor:
    """The detector's preprocessing: BGR → RGB, minus the means, NCHW float32."""
    rgb = frames[..., ::-1].astype(np.float32) - S3FD_MEAN_RGB
    return torch.from_numpy(rgb).permute(0, 3, 1, 2).contiguous()


def wav2lip_inputs(batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Mel in [-4, 4] and masked + reference faces in [0, 1], as the pipeline feeds them."""
    rng = np.random.default_rng(seed)
    faces = np.stack([cv2.resize(cartoon_face(rng), (96, 96)) for _ in range(batch)])
    masked = faces.copy()
    masked[:, 48:] = 0
    face = np.concatenate([masked, faces], axis=3).transpose(0, 3, 1, 2) / 255.0
    mel = rng.uniform(-4, 4, (batch, 1, 80, 16))
    return torch.from_numpy(mel).float(), torch.from_numpy(face).float()


@pytest.mark.parametrize(
    "cls, keys_file, params",
    [
        (Wav2Lip, "wav2lip_keys.json", 36_298_035),
        (S3FD, "s3fd_keys.json", 22_459_110),
        (Wav2LipDiscQual, "disc_qual_keys.json", 14_113_793),
    ],
)
def test_state_dict_matches_released_layout(cls, keys_file, params):
    model = on_meta(cls)
    expected = json.loads((DATA / keys_file).read_text())
    got = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert got == list(expected.items())
    assert sum(p.numel() for p in model.parameters()) == params


def test_wav2lip_batchnorm_buffers_counted():
    keys = on_meta(Wav2Lip).state_dict()
    assert len(keys) == 352
    assert sum(k.endswith("num_batches_tracked") for k in keys) == 50


@pytest.mark.parametrize(
    "height, width, sizes",
    [
        (240, 320, [(60, 80), (30, 40), (15, 20), (11, 14), (6, 7), (3, 4)]),
        (250, 300, [(62, 75), (31, 37), (15, 18), (11, 13), (6, 7), (3, 4)]),
    ],
)
def test_s3fd_map_sizes(height, width, sizes):
    model = on_meta(S3FD)
    out = model(torch.empty(2, 3, height, width, device="meta"))
    assert len(out) == 12
    for level, (h, w) in enumerate(sizes):
        assert tuple(out[2 * level].shape) == (2, 2, h, w)
        assert tuple(out[2 * level + 1].shape) == (2, 4, h, w)


def test_l2norm_formula():
    norm = L2Norm(3, scale=2.0)
    x = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0]]).view(2, 3, 1, 1)
    y = norm(x)
    assert torch.allclose(y[0, :, 0, 0], torch.tensor([1.2, 1.6, 0.0]))
    assert torch.equal(y[1], torch.zeros(3, 1, 1))  # eps keeps zero vectors finite


def test_s3fd_level1_maxout_and_raw_logits(s3fd):
    captured = {}
    s3fd.conv3_3_norm_mbox_conf.register_forward_hook(lambda m, i, o: captured.update(conf=o))
    try:
        with torch.no_grad():
            out = s3fd(torch.randn(1, 3, 32, 32) * 50)
    finally:
        s3fd.conv3_3_norm_mbox_conf._forward_hooks.clear()
    conf = captured["conf"]
    assert torch.equal(out[0][:, 0], conf[:, :3].max(dim=1).values)
    assert torch.equal(out[0][:, 1], conf[:, 3])
    assert (out[0].softmax(1).sum(1) - 1).abs().max() < 1e-5
    assert not torch.allclose(out[2].sum(1), torch.ones(1))  # logits, not probabilities


def test_conv_block_order():
    block = Conv2d(4, 4, 3, 1, 1, residual=True).eval()
    with torch.no_grad():
        block.conv_block[1].running_mean.uniform_(-1, 1)
        block.conv_block[1].running_var.uniform_(0.5, 2)
        x = torch.randn(2, 4, 5, 5)
        manual = torch.relu(block.conv_block[1](block.conv_block[0](x)) + x)
        assert torch.equal(block(x), manual)


def test_wav2lip_output_and_decoder_wiring(wav2lip):
    captured = {}
    hooks = [
        wav2lip.face_decoder_blocks[6].register_forward_hook(lambda m, i, o: captured.update(dec=o)),
        wav2lip.face_encoder_blocks[0].register_forward_hook(lambda m, i, o: captured.update(enc=o)),
        wav2lip.output_block[0].register_forward_hook(lambda m, i, o: captured.update(cat=i[0])),
    ]
    try:
        mel, face = wav2lip_inputs(2)
        with torch.no_grad():
            pred = wav2lip(mel, face)
    finally:
        for hook in hooks:
            hook.remove()
    assert pred.shape == (2, 3, 96, 96)
    assert pred.dtype == torch.float32
    assert 0 < pred.min() and pred.max() < 1
    assert captured["cat"].shape == (2, 80, 96, 96)
    assert torch.equal(captured["cat"][:, :64], captured["dec"])  # decoder output first
    assert torch.equal(captured["cat"][:, 64:], captured["enc"])


def test_wav2lip_depends_on_audio(wav2lip):
    mel, face = wav2lip_inputs(1)
    with torch.no_grad():
        a = wav2lip(mel, face)
        b = wav2lip(-mel, face)
    assert (a - b).abs().max() > 1e-3


def test_wav2lip_sequence_input_matches_folded_batch(wav2lip):
    batch, steps = 2, 2
    mel, face = wav2lip_inputs(batch * steps, seed=1)
    mel5 = mel.view(steps, batch, 1, 80, 16).transpose(0, 1)  # (B, T, 1, 80, 16)
    face5 = face.view(steps, batch, 6, 96, 96).permute(1, 2, 0, 3, 4)  # (B, 6, T, 96, 96)
    with torch.no_grad():
        seq = wav2lip(mel5, face5)
        flat = wav2lip(mel, face)
        first = wav2lip(mel5[:, 0], face5[:, :, 0])
    assert seq.shape == (batch, 3, steps, 96, 96)
    assert torch.equal(seq, flat.view(steps, batch, 3, 96, 96).permute(1, 2, 0, 3, 4))
    assert torch.allclose(seq[:, :, 0], first, atol=1e-6)


def test_random_wav2lip_output_statistics(wav2lip):
    mel, face = wav2lip_inputs(4, seed=2)
    with torch.no_grad():
        pred = wav2lip(mel, face)
    assert 0.35 < pred.mean().item() < 0.45
    assert 0.17 < pred.std().item() < 0.27
    assert ((pred < 0.01) | (pred > 0.99)).float().mean().item() < 0.01


def test_random_s3fd_finds_a_face_on_synthetic_frames(s3fd):
    rng = np.random.default_rng(3)
    frames = np.stack([cartoon_face(rng) for _ in range(4)])
    with torch.no_grad():
        out = s3fd(s3fd_input(frames))
    assert all(torch.isfinite(o).all() for o in out)
    scores = torch.stack([out[2 * lvl].softmax(1)[:, 1].flatten(1).max(1).values for lvl in range(6)], 1)
    assert (scores.max(dim=1).values > 0.5).all()
    assert scores.std() > 0.05  # levels disagree, as with real weights


def test_s3fd_half_precision_is_finite(s3fd):
    frames = np.stack([cartoon_face(np.random.default_rng(4), 64, 80)])
    half = S3FD().eval()
    half.load_state_dict(s3fd.state_dict())
    half = half.half()
    with torch.no_grad():
        out = half(s3fd_input(frames).half())
    assert all(o.dtype == torch.float16 and torch.isfinite(o).all() for o in out)


def test_disc_qual_scores_lower_half_only():
    disc = Wav2LipDiscQual().eval()
    disc.load_state_dict(random_disc_qual_state_dict(seed=0))
    faces = torch.rand(2, 3, 2, 96, 96)
    changed = faces.clone()
    changed[:, :, :, :48] = torch.rand(2, 3, 2, 48, 96)
    with torch.no_grad():
        scores = disc(faces)
        again = disc(changed)
        step0 = disc(faces[:, :, 0])
    assert scores.shape == (4, 1)
    assert ((scores > 0) & (scores < 1)).all()
    assert torch.equal(scores, again)
    assert torch.allclose(scores[:2], step0, atol=1e-6)
