"""ONNX export and TensorRT engine builds for S3FD and Wav2Lip, with manifests that keep them honest.

Loaders produce artifacts: :func:`export_onnx` writes a reproducible ONNX file (FP32, or FP16 with
S3FD's L2Norm kept in FP32), :func:`build_engines` turns checkpoints into engines with TensorRT or
TensorRT-RTX and skips what is up to date, and :func:`check_engine` is what a runtime calls before
loading an engine.

The names below are imported on first use, so that the CLI (which registers the
``build-engines`` command from this package) starts without importing torch, ONNX or TensorRT.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .builder import FLAVOR_CHOICES, FLAVORS, RTX_PORTABLE_TARGETS, ShapeRange, TensorRT, inspect_onnx, load_tensorrt
    from .engines import BuildReport, ModelResult, build_engines
    from .export import MODELS, OPSET, OnnxExport, export_onnx, onnx_model
    from .manifest import ArtifactPaths, artifact_paths, check_engine, read_manifest
    from .options import BuildOptions, parse_compute_capabilities, parse_size
    from .precision import FP32_MODULES, PRECISIONS, half_with_policy

_MODULES = {
    "builder": ("FLAVOR_CHOICES", "FLAVORS", "RTX_PORTABLE_TARGETS", "ShapeRange", "TensorRT", "inspect_onnx",
                "load_tensorrt"),
    "engines": ("BuildReport", "ModelResult", "build_engines"),
    "export": ("MODELS", "OPSET", "OnnxExport", "export_onnx", "onnx_model"),
    "manifest": ("ArtifactPaths", "artifact_paths", "check_engine", "read_manifest"),
    "options": ("BuildOptions", "parse_compute_capabilities", "parse_size"),
    "precision": ("FP32_MODULES", "PRECISIONS", "half_with_policy"),
}
_HOME = {name: module for module, names in _MODULES.items() for name in names}

__all__ = [
    "FLAVORS", "FLAVOR_CHOICES", "FP32_MODULES", "MODELS", "OPSET", "PRECISIONS", "RTX_PORTABLE_TARGETS",
    "ArtifactPaths", "BuildOptions", "BuildReport", "ModelResult", "OnnxExport", "ShapeRange", "TensorRT",
    "artifact_paths", "build_engines", "check_engine", "export_onnx", "half_with_policy", "inspect_onnx",
    "load_tensorrt", "onnx_model", "parse_compute_capabilities", "parse_size", "read_manifest",
]


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
