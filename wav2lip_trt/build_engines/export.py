"""ONNX export of every network: named tensors, dynamic shapes, one reproducible file each.

S3FD and Wav2Lip are one graph each; the scoring networks are split into the towers their
scorers call separately (the expert's audio and face encoders, syncnet_python's audio and lip
towers, the quality discriminator on 4-D faces), so one engine never computes a tower nobody asked for.

The TorchScript exporter is used on purpose: it is four times faster than the dynamo exporter
on these networks, writes a single file with the weights inside, gives every node a name that
carries its module path (which the FP16 policy keys on), and produces the same bytes for the
same checkpoint, so an ONNX hash identifies its source.
"""

from __future__ import annotations

import importlib.util
import io
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import MissingDependencyError
from ..tensor_names import S3FD_INPUTS, S3FD_OUTPUTS, SCORING_GRAPHS, WAV2LIP_INPUTS, WAV2LIP_OUTPUTS
from ..files import atomic_write_bytes, sha256_bytes
from .options import CHECKPOINT_FIELDS
from .precision import PRECISIONS, convert_to_fp16, fp32_scopes

if TYPE_CHECKING:
    import onnx

OPSET = 17
EXPORTER = f"torch {torch.__version__.split('+')[0]} torchscript opset {OPSET}"
"""Changes whenever the exported bytes may change; recorded so stale exports are redone."""


class Tower(nn.Module):
    """One method of a network as a module's forward, so a tower can be traced and run on its own."""

    def __init__(self, model: nn.Module, method: str) -> None:
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.model, self.method)(x)


@dataclass(frozen=True)
class ModelSpec:
    """How one graph is exported: its tensor names, dynamic axes, a trace-time input and its source."""

    name: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]  # tensor name -> {axis: symbolic dim name}
    trace_shapes: tuple[tuple[int, ...], ...]  # one per input; batch 2 so no axis looks like a broadcast 1
    network: str  # the checkpoint it comes from (a key of wav2lip_trt.checkpoints.NETWORKS)
    method: str | None = None  # the network's method this graph is (a tower); None = forward

    @property
    def checkpoint_option(self) -> str:
        """The CLI option that names this graph's checkpoint."""
        return CHECKPOINT_FIELDS[self.network][1]

    def module(self, network: nn.Module) -> nn.Module:
        """This graph's module, given the loaded network (shared by the towers of one checkpoint)."""
        return network if self.method is None else Tower(network, self.method).eval()

    def load(self, checkpoint: Path) -> nn.Module:
        from ..checkpoints import load_network

        return self.module(load_network(self.network, checkpoint))


_TOWER_METHODS = {"expert_audio": "embed_audio", "expert_face": "embed_face", "disc_qual": "forward",
                  "syncnet_lip": "forward_lip", "syncnet_audio": "forward_aud"}


def _tower(name: str) -> ModelSpec:
    network, inp, out, shape = SCORING_GRAPHS[name]
    return ModelSpec(name=name, input_names=(inp,), output_names=(out,),
                     dynamic_axes={inp: {0: "batch"}, out: {0: "batch"}}, trace_shapes=((2, *shape),),
                     network=network, method=_TOWER_METHODS[name])


MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in (
    ModelSpec(
        name="s3fd",
        input_names=S3FD_INPUTS,
        output_names=S3FD_OUTPUTS,
        dynamic_axes={
            "image": {0: "batch", 2: "height", 3: "width"},
            **{name: {0: "batch", 2: f"{name}_height", 3: f"{name}_width"} for name in S3FD_OUTPUTS},
        },
        trace_shapes=((2, 3, 64, 64),),
        network="s3fd",
    ),
    ModelSpec(
        name="wav2lip",
        input_names=WAV2LIP_INPUTS,
        output_names=WAV2LIP_OUTPUTS,
        dynamic_axes={name: {0: "batch"} for name in (*WAV2LIP_INPUTS, *WAV2LIP_OUTPUTS)},
        trace_shapes=((2, 1, 80, 16), (2, 6, 96, 96)),
        network="wav2lip",
    ),
    *(_tower(name) for name in SCORING_GRAPHS),
)}
"""Every graph this project exports, builds and runs, by name (the name of its files and engine)."""

SCORING_MODELS = tuple(SCORING_GRAPHS)


@dataclass(frozen=True)
class OnnxExport:
    """An exported ONNX file and what it is."""

    model: str
    precision: str
    path: Path
    sha256: str
    fp32_nodes: tuple[str, ...]  # nodes the FP16 policy kept in FP32 (empty for fp32)
    seconds: float


def model_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}") from None


def _require_onnx() -> None:
    if importlib.util.find_spec("onnx") is None:
        raise MissingDependencyError("ONNX export needs onnx: pip install 'wav2lip-trt[onnx]'")


def _trace_to_onnx(module: nn.Module, spec: ModelSpec) -> "onnx.ModelProto":
    import onnx

    args = tuple(torch.zeros(shape) for shape in spec.trace_shapes)
    with torch.no_grad():
        outputs = module(*args)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice and tracer chatter
        torch.onnx.export(
            module, args, buffer, input_names=list(spec.input_names), output_names=list(spec.output_names),
            dynamic_axes=spec.dynamic_axes, opset_version=OPSET, do_constant_folding=True, dynamo=False,
        )
    model = onnx.load_from_string(buffer.getvalue())
    # static axes the exporter could not prove static (S3FD's cls1 channels come from a Concat of Slices)
    for value, traced in zip(model.graph.output, outputs):
        dynamic = spec.dynamic_axes.get(value.name, {})
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if axis not in dynamic:
                dim.dim_value = int(traced.shape[axis])
    return model


def onnx_model(module: nn.Module, model: str, precision: str = "fp32") -> tuple["onnx.ModelProto", tuple[str, ...]]:
    """Exports an FP32 torch module to an ONNX model of the given precision (FP16 per the policy)."""
    _require_onnx()
    import onnx

    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    spec = model_spec(model)
    proto = _trace_to_onnx(module.float().eval(), spec)
    kept: tuple[str, ...] = ()
    if precision == "fp16":
        proto, names = convert_to_fp16(proto, fp32_scopes(module))
        kept = tuple(names)
    proto.producer_name, proto.producer_version = "wav2lip-trt", EXPORTER
    onnx.checker.check_model(proto)
    return proto, kept


def export_onnx(model: str, checkpoint_path: str | Path, out_path: str | Path, *, precision: str = "fp32") -> OnnxExport:
    """Writes ``model``'s ONNX for a checkpoint; the same checkpoint always gives the same bytes."""
    _require_onnx()
    start = time.perf_counter()
    module = model_spec(model).load(Path(checkpoint_path))
    proto, kept = onnx_model(module, model, precision)
    data = proto.SerializeToString()
    out_path = Path(out_path)
    atomic_write_bytes(out_path, data)
    return OnnxExport(model, precision, out_path, sha256_bytes(data), kept, time.perf_counter() - start)
