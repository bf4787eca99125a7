"""The FP16 policy: which parts of a network stay in FP32, stated once for torch and for ONNX.

TensorRT 11 and TensorRT-RTX build strongly typed networks only, so an FP16 engine comes from an
FP16-typed ONNX graph. S3FD's L2Norm sums the squares of 256–512 large trunk activations; with the
released weights that sum reaches ~2.8e5, past the FP16 maximum (65504), and its 1e-10 eps is 0 in
FP16. So every module of a type in :data:`FP32_MODULES` runs in FP32 inside an otherwise FP16
network. :func:`half_with_policy` applies the policy to a torch module (real FP16 arithmetic, used
as the reference in tests) and :func:`convert_to_fp16` applies the same policy to an exported ONNX
graph, so the two cannot drift apart.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import MissingDependencyError
from ..models import L2Norm

if TYPE_CHECKING:
    import onnx

PRECISIONS = ("fp16", "fp32")

FP32_MODULES: tuple[type[nn.Module], ...] = (L2Norm,)
"""Module types computed in FP32 in an FP16 network (their inputs are cast up, outputs down)."""


def fp32_scopes(model: nn.Module) -> list[str]:
    """Dotted paths of the submodules that the policy keeps in FP32 (``conv3_3_norm``, ...)."""
    return [name for name, module in model.named_modules() if name and isinstance(module, FP32_MODULES)]


class Fp32Island(nn.Module):
    """Runs the wrapped module in FP32 and hands its result back in the caller's dtype."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.float()).to(x.dtype)

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        """Stay FP32 through a later ``model.half()`` / ``model.to(dtype)`` (devices still move)."""
        super()._apply(fn, recurse)
        self.module.float()
        return self


def half_with_policy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in FP16 except for the policy's FP32 scopes (the original is untouched)."""
    half = copy.deepcopy(model).half()
    for scope in fp32_scopes(model):
        parent_name, _, child = scope.rpartition(".")
        parent = half.get_submodule(parent_name) if parent_name else half
        setattr(parent, child, Fp32Island(getattr(parent, child)))
    return half


def onnx_scope_prefix(scope: str) -> str:
    """The node-name prefix the TorchScript ONNX exporter gives a submodule's nodes (``/a/b/``)."""
    return "/" + scope.replace(".", "/") + "/"


def fp32_node_names(model: "onnx.ModelProto", scopes: Sequence[str]) -> list[str]:
    """Names of the ONNX nodes that belong to the FP32 scopes; every scope must own some."""
    names: list[str] = []
    for scope in scopes:
        prefix = onnx_scope_prefix(scope)
        found = [node.name for node in model.graph.node if node.name.startswith(prefix)]
        if not found:
            raise RuntimeError(f"no ONNX node belongs to FP32 scope {scope!r} (expected names starting {prefix!r})")
        names.extend(found)
    return names


def convert_to_fp16(model: "onnx.ModelProto", scopes: Sequence[str]) -> tuple["onnx.ModelProto", list[str]]:
    """FP16 copy of an FP32 ONNX graph with FP32 inputs/outputs and the FP32 scopes left in FP32.

    Returns the converted model and the names of the nodes kept in FP32 (recorded in manifests).
    """
    try:
        from onnxconverter_common.float16 import convert_float_to_float16
    except ImportError:
        raise MissingDependencyError(
            "FP16 export needs onnxconverter-common: pip install 'wav2lip-trt[onnx]'"
        ) from None
    keep = fp32_node_names(model, scopes)
    with warnings.catch_warnings():
        # it warns once per weight below FP16's normal range, which it clamps to +-1e-7 (harmless)
        warnings.simplefilter("ignore", UserWarning)
        converted = convert_float_to_float16(
            copy.deepcopy(model), keep_io_types=True, node_block_list=keep, max_finite_val=65504.0
        )
    _drop_fp16_round_trips(converted.graph, set(keep))
    return converted, keep


def _drop_fp16_round_trips(graph: "onnx.GraphProto", fp32_nodes: set[str]) -> None:
    """Rewire FP32 → FP16 → FP32 cast pairs between two FP32 nodes to the FP32 tensor itself.

    The converter casts every output of a kept node down to FP16 and back up for a kept
    consumer; for L2Norm's eps Constant that round trip turns 1e-10 into 0.
    """
    from onnx import TensorProto

    def cast_to(node: "onnx.NodeProto") -> int | None:
        if node.op_type != "Cast":
            return None
        return next((a.i for a in node.attribute if a.name == "to"), None)

    producer = {out: node for node in graph.node for out in node.output}
    kept_outputs = {out for node in graph.node if node.name in fp32_nodes for out in node.output}
    graph_outputs = {o.name for o in graph.output}
    rename: dict[str, str] = {}
    for node in graph.node:
        up = producer.get(node.input[0]) if node.input else None
        if (
            cast_to(node) == TensorProto.FLOAT
            and up is not None
            and cast_to(up) == TensorProto.FLOAT16
            and up.input[0] in kept_outputs
            and node.output[0] not in graph_outputs
        ):
            rename[node.output[0]] = up.input[0]
    for node in graph.node:
        node.input[:] = [rename.get(name, name) for name in node.input]

    while True:
        used = {name for node in graph.node for name in node.input} | graph_outputs
        dead = [n for n in graph.node if n.op_type == "Cast" and not any(o in used for o in n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    produced = {out for node in graph.node for out in node.output} | {i.name for i in graph.input}
    stale = [vi for vi in graph.value_info if vi.name not in produced]
    for vi in stale:
        graph.value_info.remove(vi)
