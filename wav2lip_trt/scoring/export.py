"""ONNX export of the scoring networks, one graph per tower, and ONNX Runtime stand-ins for them.

Same exporter and conventions as :mod:`wav2lip_trt.build_engines.export` (TorchScript exporter,
opset 17, named tensors, dynamic batch, weights inside, same bytes for the same checkpoint). Each
network is split into the towers the scorers call separately: the expert's audio and face
encoders, syncnet_python's lip and audio towers, and the quality discriminator on 4-D faces.
The stand-ins run those files through :class:`~wav2lip_trt.runners.onnxruntime_runner.OnnxRuntimeRunner`
and offer the methods the scorers call (``forward_lip``/``forward_aud``, ``embed_face``/``embed_audio``,
the discriminator's call), so ``score --backend onnxruntime`` checks the exports on real clips.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..build_engines.export import OPSET, EXPORTER, ModelSpec, OnnxExport, _require_onnx, _trace_to_onnx
from ..files import atomic_write_bytes, sha256_bytes

__all__ = ["OPSET", "TOWERS", "export_scoring_onnx", "OnnxLseNetwork", "OnnxExpert", "OnnxDiscQual"]


class _Tower(nn.Module):
    """One method of a scoring network as a module's forward, for tracing."""

    def __init__(self, model: nn.Module, method: str) -> None:
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.method == "__call__":
            return self.model(x)
        return getattr(self.model, self.method)(x)


def _loader(load_name: str, method: str) -> Callable[[Path], nn.Module]:
    def load(path: Path) -> nn.Module:
        from . import checkpoints

        return _Tower(getattr(checkpoints, load_name)(path), method).eval()

    return load


@dataclass(frozen=True)
class Tower:
    """A tower's export spec and the checkpoint option it comes from."""

    spec: ModelSpec
    network: str  # expert, syncnet or disc


def _tower(name: str, network: str, load: str, method: str, inp: str, out: str, shape: tuple[int, ...],
           option: str) -> Tower:
    spec = ModelSpec(name=name, input_names=(inp,), output_names=(out,),
                     dynamic_axes={inp: {0: "batch"}, out: {0: "batch"}}, trace_shapes=((2, *shape),),
                     load=_loader(load, method), checkpoint_option=option)
    return Tower(spec, network)


TOWERS: dict[str, Tower] = {t.spec.name: t for t in (
    _tower("expert_audio", "expert", "load_expert", "embed_audio", "mel", "audio_embedding", (1, 80, 16),
           "--expert-checkpoint"),
    _tower("expert_face", "expert", "load_expert", "embed_face", "faces", "face_embedding", (15, 48, 96),
           "--expert-checkpoint"),
    _tower("syncnet_lip", "syncnet", "load_syncnet_v2", "forward_lip", "frames", "lip_feature", (3, 5, 224, 224),
           "--syncnet-checkpoint"),
    _tower("syncnet_audio", "syncnet", "load_syncnet_v2", "forward_aud", "mfcc", "audio_feature", (1, 13, 20),
           "--syncnet-checkpoint"),
    _tower("disc_qual", "disc", "load_disc_qual", "__call__", "faces", "real_probability", (3, 96, 96),
           "--disc-checkpoint"),
)}


def export_scoring_onnx(name: str, checkpoint_path: str | Path, out_path: str | Path) -> OnnxExport:
    """Writes one tower's FP32 ONNX (``TOWERS``' names); the same checkpoint always gives the same bytes."""
    _require_onnx()
    import onnx

    if name not in TOWERS:
        raise ValueError(f"unknown scoring tower {name!r}; choose one of: {', '.join(TOWERS)}")
    start = time.perf_counter()
    spec = TOWERS[name].spec
    proto = _trace_to_onnx(spec.load(Path(checkpoint_path)), spec)
    proto.producer_name, proto.producer_version = "wav2lip-trt", EXPORTER
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    out_path = Path(out_path)
    atomic_write_bytes(out_path, data)
    return OnnxExport(name, "fp32", out_path, sha256_bytes(data), (), time.perf_counter() - start)


class _OnnxTowers:
    """Exports the towers of one checkpoint into ``folder`` and runs them with ONNX Runtime."""

    def __init__(self, names: tuple[str, ...], checkpoint: Path, folder: Path, device: torch.device | str) -> None:
        from ..runners.onnxruntime_runner import OnnxRuntimeRunner

        self.runners = {}
        for name in names:
            path = export_scoring_onnx(name, checkpoint, Path(folder) / f"{name}.onnx").path
            self.runners[name] = OnnxRuntimeRunner(path, name=f"onnxruntime-{name}", device=device)

    def run(self, name: str, x: torch.Tensor) -> torch.Tensor:
        spec = TOWERS[name].spec
        return self.runners[name].infer({spec.input_names[0]: x})[spec.output_names[0]]

    def eval(self) -> "_OnnxTowers":  # the scorers call .eval() on torch modules
        return self


class OnnxLseNetwork(_OnnxTowers):
    """syncnet_python's network from ONNX: ``forward_lip`` and ``forward_aud``."""

    def __init__(self, checkpoint: Path, folder: Path, device: torch.device | str = "cpu") -> None:
        super().__init__(("syncnet_lip", "syncnet_audio"), checkpoint, folder, device)

    def forward_lip(self, frames: torch.Tensor) -> torch.Tensor:
        return self.run("syncnet_lip", frames)

    def forward_aud(self, mfcc: torch.Tensor) -> torch.Tensor:
        return self.run("syncnet_audio", mfcc)


class OnnxExpert(_OnnxTowers):
    """The lip-sync expert from ONNX: ``embed_audio`` and ``embed_face``."""

    def __init__(self, checkpoint: Path, folder: Path, device: torch.device | str = "cpu") -> None:
        super().__init__(("expert_audio", "expert_face"), checkpoint, folder, device)

    def embed_audio(self, mel: torch.Tensor) -> torch.Tensor:
        return self.run("expert_audio", mel)

    def embed_face(self, faces: torch.Tensor) -> torch.Tensor:
        return self.run("expert_face", faces)


class OnnxDiscQual(_OnnxTowers):
    """The quality discriminator from ONNX, called like the module (5-D (B, 3, T, 96, 96) or 4-D)."""

    def __init__(self, checkpoint: Path, folder: Path, device: torch.device | str = "cpu") -> None:
        super().__init__(("disc_qual",), checkpoint, folder, device)

    def __call__(self, faces: torch.Tensor) -> torch.Tensor:
        if faces.dim() == 5:  # time-major, as the module folds it
            faces = torch.cat(torch.unbind(faces, dim=2), dim=0)
        return self.run("disc_qual", faces)
