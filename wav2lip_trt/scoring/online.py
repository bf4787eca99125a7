"""Scoring generated faces while they are made: the expert's sync and the discriminator's quality.

:class:`OnlineScorer` takes the generator's faces batch by batch (``add``) and keeps only what
later batches still need (the last 4 faces, ~19 audio and ~15 face embeddings), so memory does
not grow with the video. For every 5-frame window it records the expert's cosine similarity and
sync loss against that window's mel chunk; for every shift k = -vshift..vshift it accumulates
the mean similarity of face window i with the audio of frame i + k (the offset curve); for every
face the quality discriminator's probability. ``report()`` gives the ``expert`` and
``visual_quality`` objects of ``infer --score --json``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..execution.handoff import on_stream, upload
from .expert import LOWER_HALF, WINDOW, cosine_loss_terms, faces_to_uint8, faces_to_unit, quality_probabilities
from .lse import VSHIFT

MEL_SHAPE = (80, 16)
BATCH_SIZE = 64  # windows or faces per forward
COMPACT_AFTER = 32  # per-batch result tensors kept before they are concatenated into one


class ExpertNetwork(Protocol):
    """What the scorer needs from the lip-sync expert (:class:`SyncNetColor` or its runners, ``ExpertTowers``)."""

    def embed_audio(self, mel: torch.Tensor) -> torch.Tensor: ...

    def embed_face(self, faces: torch.Tensor) -> torch.Tensor: ...

    def eval(self) -> Any: ...


class QualityNetwork(Protocol):
    """The quality discriminator (:class:`~wav2lip_trt.models.Wav2LipDiscQual` or its runner, ``QualityTower``)."""

    def __call__(self, faces: torch.Tensor) -> torch.Tensor: ...

    def eval(self) -> Any: ...


@dataclass(frozen=True)
class ExpertReport:
    """The expert's numbers over N output frames (W = N - 4 windows, in output order)."""

    similarity: list[float | None]  # (W,) cos(audio_i, face_i); None where a window lacks a face
    sync_loss: float | None  # mean of -max(log similarity, -100) over the scored windows
    av_offset: int | None  # -argmax of the curve: negative means the audio lags the video
    offset_curve: list[float | None]  # (2 vshift + 1,) mean cos(face_i, audio_{i+k}), k = -vshift..vshift
    offset_counts: list[int]  # pairs behind each curve point
    every: int = 1  # windows starting at every K-th frame were scored

    def to_json(self) -> dict[str, Any]:
        return {"sync_loss": self.sync_loss, "similarity": self.similarity, "av_offset": self.av_offset,
                "every": self.every,
                "offset_curve": self.offset_curve, "offset_counts": self.offset_counts,
                "windows": len(self.similarity), "scored_windows": sum(s is not None for s in self.similarity)}


@dataclass(frozen=True)
class QualityReport:
    """The quality discriminator's probability that each output face is real."""

    per_frame: list[float | None]  # (N,) None where a frame has no generated face (or was not sampled)
    mean: float | None
    perceptual_loss: float | None  # -mean log p (the generator's GAN loss term), informational
    every: int = 1  # faces of every K-th frame were scored

    def to_json(self) -> dict[str, Any]:
        return {"per_frame": self.per_frame, "mean": self.mean, "perceptual_loss": self.perceptual_loss,
                "every": self.every}


def summary(report: dict[str, Any]) -> str:
    """The scores for a final line: ``expert sync loss 0.412, similarity 0.663, offset 0; quality 0.52``."""
    parts = []
    expert = report.get("expert")
    if expert is not None:
        sims = [s for s in expert["similarity"] if s is not None]
        sim = f"{sum(sims) / len(sims):.3f}" if sims else "-"
        loss = "-" if expert["sync_loss"] is None else f"{expert['sync_loss']:.3f}"
        offset = "-" if expert["av_offset"] is None else f"{expert['av_offset']:+d}".replace("+0", "0")
        every = expert.get("every", 1)
        parts.append(f"expert sync loss {loss}, similarity {sim}, offset {offset}"
                     + (f" (windows of every {every}th frame)" if every != 1 else ""))
    quality = report.get("visual_quality")
    if quality is not None:
        parts.append("quality " + ("-" if quality["mean"] is None else f"{quality['mean']:.3f}"))
    return "; ".join(parts)


def _mean(values: list[float]) -> float | None:
    return float(np.mean(np.asarray(values, dtype=np.float64))) if values else None


class OnlineScorer:
    """Streams generated faces through the expert and/or the quality discriminator.

    Call :meth:`add` from one thread, with output frame indices increasing from call to call
    (gaps allowed: frames without a generated face are simply not added). Models run on
    ``device`` in eval mode. ``seconds`` accumulates the time spent scoring, for cost reports.

    On CUDA everything the scorer launches runs on ``stream`` — the pipeline's compute stream,
    which the generator's predictions are valid on and the scoring runners share — and nothing
    comes back to the host until :meth:`report`: the predictions are truncated to uint8 and
    scored on the device, per-window and per-frame results stay there as tensors, and the
    pipeline never waits for the scorer.

    ``every=K`` scores only the windows and faces that start at a multiple of K (K = 5: windows
    side by side, a fifth of the expert's and the discriminator's work); the others are reported
    as None, and the offset curve averages over the scored windows. Every mel chunk is still
    embedded (the curve pairs each scored window with the audio around it; the audio tower is
    cheap).
    """

    def __init__(self, expert: ExpertNetwork | None = None, disc: QualityNetwork | None = None, *,
                 device: torch.device | str = "cpu", vshift: int = VSHIFT, batch_size: int = BATCH_SIZE,
                 stream: torch.cuda.Stream | None = None, every: int = 1) -> None:
        if expert is None and disc is None:
            raise ValueError("OnlineScorer needs an expert, a discriminator, or both")
        self.expert = expert.eval() if expert is not None else None
        self.disc = disc.eval() if disc is not None else None
        self.device = torch.device(device)
        self.stream = stream
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        self.every = every
        self.vshift = vshift
        self.batch_size = batch_size
        self.seconds = 0.0
        self._last = -1
        self._lower: dict[int, torch.Tensor] = {}  # frame -> (3, 48, 96) lower half in [0, 1]
        self._audio: dict[int, torch.Tensor] = {}  # frame -> (512,) audio embedding of its mel chunk
        self._face: dict[int, torch.Tensor] = {}  # window -> (512,) face embedding
        # per window / frame results, as (indices, values) tensor pairs until report() reads them
        self._similarity: list[tuple[list[int], torch.Tensor]] = []
        self._bce: list[tuple[list[int], torch.Tensor]] = []
        self._quality: list[tuple[list[int], torch.Tensor]] = []
        with on_stream(self.stream):  # every tensor of the scorer lives on its stream
            self._sums = torch.zeros(2 * vshift + 1, dtype=torch.float64, device=self.device)
            self._shifts = torch.arange(-vshift, vshift + 1, device=self.device)
        self._counts = np.zeros(2 * vshift + 1, dtype=np.int64)  # combinatorial: known on the host

    @classmethod
    def from_checkpoints(cls, expert_checkpoint: str | Path | None, disc_checkpoint: str | Path | None = None, *,
                         device: torch.device | str = "cpu") -> "OnlineScorer":
        """A torch scorer straight from the released files (one-line :class:`CheckpointError` each),
        its networks made as ``infer --score`` makes them (:func:`~.networks.load_scoring_networks`).

        Raises :class:`InputError` when neither checkpoint is given, so ``--score`` alone is a user error.
        """
        from ..backends import RunnerRequest
        from .networks import load_scoring_networks

        if expert_checkpoint is None and disc_checkpoint is None:
            raise InputError("--score needs --expert-checkpoint lipsync_expert.pth (and optionally --disc-checkpoint)")
        networks = load_scoring_networks("torch", RunnerRequest(None, None, torch.device(device)),
                                         expert=expert_checkpoint, disc=disc_checkpoint)
        return cls(networks.expert, networks.disc, device=networks.device, stream=networks.stream)

    def add(self, indices: Sequence[int] | np.ndarray, faces: np.ndarray | torch.Tensor,
            mel_chunks: np.ndarray | torch.Tensor | None) -> None:
        """Score one batch of generated faces.

        indices: (B,) output frame numbers, increasing, all above those of earlier calls.
        faces: (B, 96, 96, 3) uint8 BGR as pasted, or the generator's (B, 3, 96, 96) float output in
        [0, 1] (then truncated to uint8 here, exactly as the paste step does) — on the host, or on
        the scorer's CUDA device, valid on its ``stream``.
        mel_chunks: (B, 80, 16) or (B, 1, 80, 16) float32, the chunk each face was generated from;
        may be None when only the discriminator scores.
        """
        start = time.perf_counter()
        idx = [int(i) for i in np.asarray(indices).reshape(-1)]
        if any(b <= a for a, b in zip(idx, idx[1:])) or (idx and idx[0] <= self._last):
            raise ValueError(f"frame indices must increase across add() calls (last was {self._last}), got {idx[:8]}")
        with on_stream(self.stream), torch.no_grad():
            unit = self._unit(faces)
            if len(idx) != unit.shape[0]:
                raise ValueError(f"{len(idx)} indices for {unit.shape[0]} faces")
            if not idx:
                return
            if self.disc is not None:
                self._add_quality(idx, unit)
            if self.expert is not None:
                if mel_chunks is None:
                    raise ValueError("the expert needs the mel chunk of every face")
                self._add_expert(idx, unit, mel_chunks)
            for parts in (self._similarity, self._bce, self._quality):
                if len(parts) > COMPACT_AFTER:  # a few large tensors, not one small one per batch
                    parts[:] = [([i for ids, _ in parts for i in ids], torch.cat([v for _, v in parts]))]
        self._last = idx[-1]
        self._prune()
        self.seconds += time.perf_counter() - start

    def _unit(self, faces: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(B, 3, 96, 96) float32 ``uint8 faces / 255.`` on the scorer's device.

        Device predictions are truncated and divided where they are, with the host path's exact
        arithmetic (float32 multiply, truncating cast, float64 divide, float32 cast).
        """
        if isinstance(faces, torch.Tensor) and faces.is_floating_point() and faces.device.type != "cpu":
            if faces.dim() != 4 or tuple(faces.shape[1:]) != (3, 96, 96):
                raise ValueError(f"expected (B, 3, 96, 96) float predictions, got {tuple(faces.shape)}")
            faces_u8 = (faces.float() * 255.0).to(torch.uint8)
            return (faces_u8.to(torch.float64) / 255.0).to(torch.float32).to(self.device)
        return faces_to_unit(faces_to_uint8(faces)).to(self.device)

    def _add_quality(self, idx: list[int], unit: torch.Tensor) -> None:
        if self.every != 1:
            rows = [r for r, i in enumerate(idx) if i % self.every == 0]
            if not rows:
                return
            idx = [idx[r] for r in rows]
            unit = unit[rows] if len(rows) < len(unit) else unit
        for s in range(0, len(idx), self.batch_size):
            probs = quality_probabilities(self.disc, unit[s: s + self.batch_size]).float()
            self._quality.append((idx[s: s + self.batch_size], probs))

    def _add_expert(self, idx: list[int], unit: torch.Tensor, mel_chunks: np.ndarray | torch.Tensor) -> None:
        assert self.expert is not None
        mel = torch.as_tensor(np.asarray(mel_chunks) if not isinstance(mel_chunks, torch.Tensor) else mel_chunks)
        if mel.device != self.device:
            mel = upload(mel, self.device, self.stream)  # pinned, non-blocking: no wait for the compute stream
        mel = mel.to(torch.float32).reshape(-1, 1, *MEL_SHAPE)
        if mel.shape[0] != len(idx):
            raise ValueError(f"{len(idx)} faces but {mel.shape[0]} mel chunks")
        new_audio = []
        for s in range(0, len(idx), self.batch_size):
            emb = self.expert.embed_audio(mel[s: s + self.batch_size])
            for j, e in zip(idx[s: s + self.batch_size], emb):
                self._audio[j] = e
                new_audio.append(j)
        for j, face in zip(idx, unit):
            self._lower[j] = face[:, LOWER_HALF:]
        windows = sorted({i for j in idx for i in range(j - WINDOW + 1, j + 1)
                          if i >= 0 and i % self.every == 0 and i not in self._face
                          and all(i + t in self._lower for t in range(WINDOW))})
        old_windows = sorted(self._face)
        for s in range(0, len(windows), self.batch_size):
            chunk = windows[s: s + self.batch_size]
            x = torch.stack([torch.cat([self._lower[i + t] for t in range(WINDOW)]) for i in chunk])
            emb = self.expert.embed_face(x)
            audio = torch.stack([self._audio[i] for i in chunk])
            sim, bce = cosine_loss_terms(audio, emb)
            self._face.update(zip(chunk, emb))
            self._similarity.append((chunk, sim.float()))
            self._bce.append((chunk, bce.float()))
        self._pair(windows, sorted(self._audio))  # new faces with every audio
        self._pair(old_windows, new_audio)  # older faces with the new audio

    def _pair(self, windows: list[int], frames: list[int]) -> None:
        """Adds cos(face_i, audio_j) for |j - i| <= vshift to the offset curve.

        Per shift, a masked sum (a plain reduction: the same result every run, where a scatter
        with atomics would not be); the shifts go up in one non-blocking upload.
        """
        if not windows or not frames:
            return
        shift = np.asarray(frames)[None, :] - np.asarray(windows)[:, None]
        near = np.abs(shift) <= self.vshift
        if not near.any():
            return
        self._counts += np.bincount(shift[near] + self.vshift, minlength=len(self._counts))
        faces = torch.stack([self._face[i] for i in windows])
        audio = torch.stack([self._audio[j] for j in frames])
        cos = F.cosine_similarity(faces[:, None, :], audio[None, :, :], dim=-1).double()
        shifts = upload(np.clip(shift, -self.vshift - 1, self.vshift + 1).astype(np.int16), self.device, self.stream)
        mask = shifts[None, :, :] == self._shifts[:, None, None]  # (2 vshift + 1, W, F)
        self._sums += (cos[None, :, :] * mask).sum(dim=(1, 2))

    def _prune(self) -> None:
        """Drops what no later frame can need (later frames have indices > the last one)."""
        last = self._last
        self._lower = {j: v for j, v in self._lower.items() if j > last - WINDOW + 1}
        first_window = last - WINDOW + 2  # the earliest window a later frame can complete
        self._audio = {j: v for j, v in self._audio.items() if j >= first_window - self.vshift}
        self._face = {i: v for i, v in self._face.items() if i >= last + 1 - self.vshift}

    def report(self, total_frames: int | None = None) -> dict[str, Any]:
        """``{"expert": {...}, "visual_quality": {...}}`` (only the parts a model was given for).

        ``total_frames`` is the number of output frames N (default: the last added index + 1).
        """
        n = self._last + 1 if total_frames is None else int(total_frames)
        out: dict[str, Any] = {}
        if self.expert is not None:
            out["expert"] = self.expert_report(n).to_json()
        if self.disc is not None:
            out["visual_quality"] = self.quality_report(n).to_json()
        return out

    def _host(self, parts: list[tuple[list[int], torch.Tensor]]) -> dict[int, float]:
        """Results kept on the device, read back once (on the scorer's stream, after its work)."""
        with on_stream(self.stream):
            values = torch.cat([v.reshape(-1) for _, v in parts]).cpu().tolist() if parts else []
        return dict(zip((i for idx, _ in parts for i in idx), values))

    def expert_report(self, total_frames: int) -> ExpertReport:
        """The expert's numbers over ``total_frames`` output frames."""
        windows = max(0, total_frames - WINDOW + 1)
        similarities, losses = self._host(self._similarity), self._host(self._bce)
        similarity = [similarities.get(i) for i in range(windows)]
        bce = [losses[i] for i in range(windows) if i in losses]
        with on_stream(self.stream):
            sums = self._sums.cpu().numpy()
        counts = self._counts.copy()
        curve = np.where(counts > 0, sums / np.maximum(counts, 1), -np.inf)
        best = int(np.argmax(curve)) if counts.any() else None
        return ExpertReport(
            similarity=similarity,
            sync_loss=_mean(bce),
            av_offset=None if best is None else -(best - self.vshift),
            offset_curve=[float(c) if n else None for c, n in zip(curve, counts)],
            offset_counts=[int(c) for c in counts],
            every=self.every,
        )

    def quality_report(self, total_frames: int) -> QualityReport:
        """The discriminator's numbers over ``total_frames`` output frames."""
        quality = self._host(self._quality)
        per_frame = [quality.get(i) for i in range(total_frames)]
        probs = [p for p in per_frame if p is not None]
        logs = [max(float(np.log(p)) if p > 0 else -np.inf, -100.0) for p in probs]
        return QualityReport(per_frame=per_frame, mean=_mean(probs), perceptual_loss=None if not logs else -_mean(logs),
                             every=self.every)
