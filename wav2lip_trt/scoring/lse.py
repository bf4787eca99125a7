"""LSE-D and LSE-C: what the Wav2Lip authors' ``SyncNetInstance_calc_scores.evaluate`` computes.

From a clip's frames (raw 0-255 BGR 224x224) and its MFCCs (python_speech_features on the raw
int16 scale), syncnet_python's network gives one 1024-d lip feature per 5-frame window and one
audio feature per 20 MFCC columns (0.2 s). Every video window is compared by Euclidean distance
with the audio windows up to ``vshift`` frames earlier or later; the mean distance per shift is
a curve whose minimum is LSE-D and whose depth below its median is LSE-C. The quirks that change
the numbers are kept on purpose (see ``scoring-reference.md``): ``n = min_length - 5`` windows
(one valid window dropped), 640 samples per frame whatever the real rates, zero rows padding the
audio features, eps 1e-6 inside the norm, the lower median, a zero-padded median filter.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError

SAMPLES_PER_FRAME = 640  # 16000 / 25, hard-coded upstream: the real fps and sample rate are never checked
WINDOW = 5  # video frames per window
MFCC_PER_FRAME = 4  # MFCC columns per video frame (100 Hz / 25 fps)
MFCC_WINDOW = 20  # MFCC columns per window
VSHIFT = 15  # frames of shift searched either way (calculate_scores_real_videos.py's default)
BATCH_SIZE = 20  # windows per forward (calculate_scores_real_videos.py's default)
PAIRWISE_EPS = 1e-6  # torch.nn.functional.pairwise_distance adds it to the difference
FRAMEWISE_KERNEL = 9  # scipy.signal.medfilt kernel for the framewise confidence
LIP_SIZE = 224  # frame side syncnet_python's lip tower accepts


class LseNetwork(Protocol):
    """What LSE needs from syncnet_python's network (:class:`SyncNetV2` or a runner around one)."""

    def forward_lip(self, frames: torch.Tensor) -> torch.Tensor: ...

    def forward_aud(self, mfcc: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class LseResult:
    """One clip's LSE numbers, as ``evaluate`` computes them.

    ``dists[i, m]`` compares video window i with audio window ``i + m - vshift``; ``av_offset`` is
    (video index - audio index) of the best shift: negative means the audio lags the video.
    """

    av_offset: int
    min_dist: float  # LSE-D: the smallest mean distance over the shifts
    confidence: float  # LSE-C: median of the mean distances minus the smallest
    framewise_confidence: np.ndarray  # (n,) float32: median-filtered per-window confidence (fconfm)
    dists: np.ndarray  # (n, 2 * vshift + 1) float32
    mean_dists: np.ndarray  # (2 * vshift + 1,) float32: the curve (mdist)

    @property
    def windows(self) -> int:
        return int(self.dists.shape[0])

    def to_json(self) -> dict[str, Any]:
        """The spec's ``lse`` object (plus ``windows`` and the curve ``mean_dists``)."""
        return {
            "av_offset": self.av_offset,
            "min_dist": self.min_dist,
            "confidence": self.confidence,
            "framewise_confidence": [float(v) for v in self.framewise_confidence],
            "dists": [[float(v) for v in row] for row in self.dists],
            "mean_dists": [float(v) for v in self.mean_dists],
            "windows": self.windows,
        }


def window_count(num_frames: int, num_samples: int) -> int:
    """``min(frames, floor(samples / 640)) - 5``: the number of windows ``evaluate`` scores."""
    return min(num_frames, num_samples // SAMPLES_PER_FRAME) - WINDOW


def check_window_count(num_frames: int, num_samples: int, what: str) -> int:
    """:func:`window_count`, or an :class:`InputError` saying how much is missing when it is < 1."""
    n = window_count(num_frames, num_samples)
    if n < 1:
        raise InputError(
            f"{what}: too short to score: LSE needs at least {WINDOW + 1} frames and "
            f"{(WINDOW + 1) * SAMPLES_PER_FRAME} audio samples at 16 kHz ({(WINDOW + 1) / 25:g} s), "
            f"got {num_frames} frames and {num_samples} samples"
        )
    return n


def _batched(items: Iterable[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    batch: list[np.ndarray] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def lip_windows(frames: Iterable[np.ndarray], limit: int | None = None) -> Iterator[np.ndarray]:
    """(3, 5, 224, 224) float32 windows i = 0, 1, ... from (224, 224, 3) uint8 BGR frames, streamed.

    Window i holds frames i..i+4 as raw 0-255 values in BGR channel order (no normalisation,
    exactly ``imtv[0, :, i:i+5]`` upstream). Holds only 5 frames at a time; stops after ``limit``.
    """
    recent: deque[np.ndarray] = deque(maxlen=WINDOW)
    made = 0
    for frame in frames:
        if frame.shape != (LIP_SIZE, LIP_SIZE, 3):
            raise ValueError(f"expected ({LIP_SIZE}, {LIP_SIZE}, 3) frames, got {frame.shape}")
        recent.append(frame)
        if len(recent) == WINDOW:
            if limit is not None and made >= limit:
                return
            yield np.stack(recent, axis=0).transpose(3, 0, 1, 2).astype(np.float32)
            made += 1


@torch.no_grad()
def lip_features(net: LseNetwork, frames: Iterable[np.ndarray], limit: int | None = None,
                 batch_size: int = BATCH_SIZE, device: torch.device | str = "cpu") -> torch.Tensor:
    """(n, 1024) float32 lip features of the windows of ``frames`` (at most ``limit``), on the CPU.

    Batches of ``batch_size`` windows starting at window 0, as upstream; in eval mode the batch
    does not change the values (BatchNorm uses running statistics).
    """
    out = []
    for batch in _batched(lip_windows(frames, limit), batch_size):
        x = torch.from_numpy(np.stack(batch)).to(device)
        out.append(net.forward_lip(x).float().cpu())
    return torch.cat(out) if out else torch.zeros((0, 0))


@torch.no_grad()
def audio_features(net: LseNetwork, mfcc: np.ndarray, count: int, batch_size: int = BATCH_SIZE,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """(count, 1024) float32 audio features: window i is MFCC columns 4i..4i+19 of (13, T) ``mfcc``."""
    cct = torch.from_numpy(np.ascontiguousarray(mfcc, dtype=np.float32))[None, None]
    needed = MFCC_PER_FRAME * (count - 1) + MFCC_WINDOW
    if count > 0 and cct.shape[-1] < needed:
        raise ValueError(f"{count} audio windows need {needed} MFCC columns, got {cct.shape[-1]}")
    out = []
    for start in range(0, count, batch_size):
        stop = min(count, start + batch_size)
        x = torch.cat([cct[..., MFCC_PER_FRAME * i: MFCC_PER_FRAME * i + MFCC_WINDOW] for i in range(start, stop)])
        out.append(net.forward_aud(x.to(device)).float().cpu())
    return torch.cat(out) if out else torch.zeros((0, 0))


def shifted_distances(im_feat: torch.Tensor, cc_feat: torch.Tensor, vshift: int = VSHIFT) -> torch.Tensor:
    """(n, 2 vshift + 1) ``dists[i, m] = ||im_feat[i] - ccpad[i + m] + 1e-6||``, ``calc_pdist`` upstream.

    ``ccpad`` is ``cc_feat`` with ``vshift`` zero rows on each side, so a shift past either end
    measures ``||im_feat[i] + 1e-6||``.
    """
    if im_feat.shape != cc_feat.shape or im_feat.dim() != 2:
        raise ValueError(f"feature shapes differ: {tuple(im_feat.shape)} vs {tuple(cc_feat.shape)}")
    width = 2 * vshift + 1
    padded = F.pad(cc_feat, (0, 0, vshift, vshift))
    shifted = padded.unfold(0, width, 1).transpose(1, 2)  # (n, width, dim): row i is ccpad[i:i+width]
    return F.pairwise_distance(im_feat[:, None, :].expand_as(shifted), shifted, eps=PAIRWISE_EPS)


def zero_padded_medfilt(values: np.ndarray, kernel: int) -> np.ndarray:
    """``scipy.signal.medfilt``: odd ``kernel``, zeros beyond both ends, same dtype and length."""
    values = np.asarray(values)
    half = kernel // 2
    padded = np.concatenate([np.zeros(half, values.dtype), values, np.zeros(half, values.dtype)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, kernel)
    return np.sort(windows, axis=1)[:, half].astype(values.dtype)


def lse_scores(im_feat: torch.Tensor, cc_feat: torch.Tensor, vshift: int = VSHIFT) -> LseResult:
    """Offset, LSE-D, LSE-C and framewise confidence from the two (n, 1024) feature sets."""
    if im_feat.shape[0] < 1:
        raise ValueError("no windows to score")
    dists = shifted_distances(im_feat.float(), cc_feat.float(), vshift)
    mdist = torch.mean(torch.stack(list(dists), 1), 1)  # upstream's order of summation
    minval, minidx = torch.min(mdist, 0)
    median = torch.median(mdist)  # the lower middle for an even count; 2 vshift + 1 is odd
    fdist = dists[:, int(minidx)].numpy()
    fconf = median.numpy() - fdist
    return LseResult(
        av_offset=int(vshift - int(minidx)),
        min_dist=float(minval),
        confidence=float(median - minval),
        framewise_confidence=zero_padded_medfilt(fconf, FRAMEWISE_KERNEL),
        dists=dists.numpy(),
        mean_dists=mdist.numpy(),
    )
