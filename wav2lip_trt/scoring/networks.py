"""The scoring networks as the scorers call them, over runners of any backend.

The scorers (:class:`~wav2lip_trt.scoring.online.OnlineScorer`, :mod:`~wav2lip_trt.scoring.lse`)
call methods — ``embed_audio``/``embed_face``, ``forward_lip``/``forward_aud``, the discriminator's
call — and never learn whether a torch module, an ONNX Runtime session or a TensorRT engine
answers. Each method is one exported graph (a tower, see ``build_engines.export.MODELS``), run by
a :class:`~wav2lip_trt.runners.base.Runner` from :func:`wav2lip_trt.backends.create_graph_runners`,
so the scoring networks load, export, build and run exactly like S3FD and Wav2Lip.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from ..backends import GraphRunners, RunnerRequest, create_graph_runners
from ..build_engines.options import graphs_of
from ..errors import InputError
from ..execution.handoff import on_stream
from ..runners.base import Runner
from ..tensor_names import S3FD_OUTPUTS, SCORING_GRAPHS


def _run(runner: Runner, graph: str, x: torch.Tensor) -> torch.Tensor:
    """The tower's output as a tensor of its own.

    A runner's outputs may be views of its buffers, valid only until its next call (TensorRT
    engines, CUDA graphs); the scorers keep embeddings and probabilities across calls, so each
    output is copied (on the runner's stream, where it is valid).
    """
    _, inp, out, _ = SCORING_GRAPHS[graph]
    result = runner.infer({inp: x})[out]
    with on_stream(runner.stream):
        return result.clone()


class ExpertTowers:
    """Wav2Lip's lip-sync expert: ``embed_audio`` (B, 1, 80, 16) and ``embed_face`` (B, 15, 48, 96) -> (B, 512)."""

    def __init__(self, audio: Runner, face: Runner) -> None:
        self.audio, self.face = audio, face

    def embed_audio(self, mel: torch.Tensor) -> torch.Tensor:
        return _run(self.audio, "expert_audio", mel)

    def embed_face(self, faces: torch.Tensor) -> torch.Tensor:
        return _run(self.face, "expert_face", faces)

    def eval(self) -> "ExpertTowers":
        return self


class QualityTower:
    """The quality discriminator, called like ``Wav2Lip_disc_qual``: (B, 3, T, 96, 96) or (B, 3, 96, 96) in [0, 1]."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def __call__(self, faces: torch.Tensor) -> torch.Tensor:
        if faces.dim() == 5:  # time folded into the batch, time-major, as the module does
            faces = torch.cat(torch.unbind(faces, dim=2), dim=0)
        return _run(self.runner, "disc_qual", faces)

    def eval(self) -> "QualityTower":
        return self


class LseTowers:
    """syncnet_python's network: ``forward_lip`` (B, 3, 5, 224, 224) and ``forward_aud`` (B, 1, 13, 20) -> (B, 1024)."""

    def __init__(self, lip: Runner, audio: Runner) -> None:
        self.lip, self.audio = lip, audio

    def forward_lip(self, frames: torch.Tensor) -> torch.Tensor:
        return _run(self.lip, "syncnet_lip", frames)

    def forward_aud(self, mfcc: torch.Tensor) -> torch.Tensor:
        return _run(self.audio, "syncnet_audio", mfcc)


class DetectorCall:
    """S3FD as a callable returning the twelve head outputs in network order, like the module."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def __call__(self, image: torch.Tensor) -> list[torch.Tensor]:
        out = self.runner.infer({"image": image})
        return [out[name] for name in S3FD_OUTPUTS]


@dataclass
class ScoringNetworks:
    """The networks one scoring run uses, all on one backend, device and stream."""

    runners: GraphRunners
    expert: ExpertTowers | None
    disc: QualityTower | None
    syncnet: LseTowers | None
    detector: DetectorCall | None
    device: torch.device

    @property
    def stream(self) -> torch.cuda.Stream | None:
        return self.runners.stream

    @property
    def backend(self) -> str:
        return self.runners.backend

    def close(self) -> None:
        self.runners.__exit__(None, None, None)

    def __enter__(self) -> "ScoringNetworks":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_scoring_networks(backend: str, request: RunnerRequest, *, expert: Path | None = None,
                          disc: Path | None = None, syncnet: Path | None = None,
                          s3fd: Path | None = None) -> ScoringNetworks:
    """Runners for the given checkpoints' towers (each checkpoint read once, strictly, one-line errors).

    ``request`` gives the device, precision, engines folder, flavour and the stream to share (the
    pipeline's compute stream for ``infer --score``); its generator and detector fields are unused.
    """
    graphs: dict[str, Path] = {}
    for network, path in (("expert", expert), ("disc_qual", disc), ("syncnet_v2", syncnet)):
        if path is not None:
            graphs.update((graph, Path(path)) for graph in graphs_of(network))
    if s3fd is not None:
        graphs["s3fd"] = Path(s3fd)
    if not graphs:
        raise InputError("no scoring checkpoint given")
    made = create_graph_runners(backend, graphs, request)
    get: Mapping[str, Runner] = made.runners
    return ScoringNetworks(
        runners=made,
        expert=ExpertTowers(get["expert_audio"], get["expert_face"]) if expert is not None else None,
        disc=QualityTower(get["disc_qual"]) if disc is not None else None,
        syncnet=LseTowers(get["syncnet_lip"], get["syncnet_audio"]) if syncnet is not None else None,
        detector=DetectorCall(get["s3fd"]) if s3fd is not None else None,
        device=next(iter(get.values())).device,
    )
