"""``build-engines`` as a library call: export, build and record each network, skipping what is up to date."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import InputError
from .builder import BuildSettings, TensorRT, build_engine, load_tensorrt, resolve_targets
from .export import EXPORTER, OPSET, export_onnx
from ..files import sha256_file
from .manifest import (
    FORMAT, artifact_paths, build_host, current_gpu, engine_targets, now, read_manifest, stale_reason,
    timing_cache_path, write_manifest,
)
from .options import BuildOptions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelResult:
    """What happened to one network."""

    model: str
    precision: str
    onnx: Path
    onnx_status: str  # "exported" or "up to date"
    engine: Path | None  # None with --onnx-only
    engine_status: str | None  # "built", "up to date" or None with --onnx-only
    reason: str | None  # why the last artifact was (re)made; None when nothing was
    export_seconds: float
    build_seconds: float
    onnx_bytes: int
    engine_bytes: int | None

    @property
    def skipped(self) -> bool:
        return self.onnx_status == "up to date" and self.engine_status in (None, "up to date")


@dataclass(frozen=True)
class BuildReport:
    results: tuple[ModelResult, ...]
    flavor: str | None  # None with --onnx-only
    tensorrt_version: str | None
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "flavor": self.flavor,
            "tensorrt_version": self.tensorrt_version,
            "seconds": round(self.seconds, 3),
            "results": [
                {
                    "model": r.model, "precision": r.precision, "onnx": str(r.onnx), "onnx_status": r.onnx_status,
                    "engine": None if r.engine is None else str(r.engine), "engine_status": r.engine_status,
                    "reason": r.reason, "export_seconds": round(r.export_seconds, 3),
                    "build_seconds": round(r.build_seconds, 3), "onnx_bytes": r.onnx_bytes,
                    "engine_bytes": r.engine_bytes,
                }
                for r in self.results
            ],
        }


def _onnx_request(model: str, precision: str, checkpoint_sha256: str) -> dict[str, Any]:
    return {
        "model": model, "precision": precision, "checkpoint_sha256": checkpoint_sha256,
        "exporter": EXPORTER, "wav2lip_trt": __version__,
    }


def _engine_request(options: BuildOptions, model: str, onnx_sha256: str, rt: TensorRT) -> dict[str, Any]:
    profile = {name: {"min": list(r.min), "opt": list(r.opt), "max": list(r.max)}
               for name, r in options.profile(model).items()}
    return {
        "onnx_sha256": onnx_sha256,
        "profile": profile,
        "tensorrt": {"flavor": rt.flavor.name, "version": rt.version},
        "targets": list(options.compute_capabilities) or ["portable"],
        "workspace_bytes": None if options.workspace_mib is None else options.workspace_mib << 20,
    }


def _ensure_onnx(options: BuildOptions, model: str, checkpoint: Path) -> tuple[dict[str, Any], str, float, str | None]:
    from ..checkpoints import file_sha256

    paths = artifact_paths(options.out, model, options.precision)
    checkpoint_sha256 = file_sha256(checkpoint)
    request = _onnx_request(model, options.precision, checkpoint_sha256)
    reason = "--force" if options.force else stale_reason(paths.onnx_manifest, paths.onnx, request)
    if reason is None:
        log.info("%s %s: ONNX up to date (%s)", model, options.precision, paths.onnx)
        return read_manifest(paths.onnx_manifest) or {}, "up to date", 0.0, None
    log.info("%s %s: exporting ONNX (%s)", model, options.precision, reason)
    export = export_onnx(model, checkpoint, paths.onnx, precision=options.precision)
    manifest = {
        "format": FORMAT,
        "kind": "onnx",
        "model": model,
        "precision": options.precision,
        "request": request,
        "file": {"name": paths.onnx.name, "sha256": export.sha256, "bytes": paths.onnx.stat().st_size},
        "checkpoint": {"path": str(checkpoint), "sha256": checkpoint_sha256},
        "opset": OPSET,
        "exporter": EXPORTER,
        "fp32_nodes": list(export.fp32_nodes),
        "export_seconds": round(export.seconds, 3),
        "created": now(),
    }
    write_manifest(paths.onnx_manifest, manifest)
    log.info("%s %s: wrote %s (%.1f s)", model, options.precision, paths.onnx, export.seconds)
    return manifest, "exported", export.seconds, reason


def _ensure_engine(
    options: BuildOptions, model: str, checkpoint: Path, rt: TensorRT, onnx_manifest: dict[str, Any],
    show_progress: bool,
) -> tuple[str, float, str | None]:
    paths = artifact_paths(options.out, model, options.precision)
    request = _engine_request(options, model, onnx_manifest["file"]["sha256"], rt)
    reason = "--force" if options.force else stale_reason(paths.engine_manifest, paths.engine, request)
    if reason is None:
        log.info("%s %s: engine up to date (%s)", model, options.precision, paths.engine)
        return "up to date", 0.0, None
    log.info("%s %s: building engine with %s %s (%s)", model, options.precision, rt.flavor.label, rt.version, reason)
    settings = BuildSettings(
        workspace_bytes=request["workspace_bytes"],
        compute_capabilities=options.compute_capabilities,
        timing_cache=timing_cache_path(options.out, rt.flavor.name),
    )
    profile = options.profile(model)
    built = build_engine(rt, paths.onnx, paths.engine, profile, settings,
                         label=f"{model} {options.precision}", show_progress=show_progress,
                         float32_layers=onnx_manifest["fp32_nodes"])
    host = build_host()
    inputs = [
        {"name": t.name, "dtype": t.dtype, "shape": list(t.shape),
         "profile": request["profile"].get(t.name)}
        for t in built.network.inputs
    ]
    half_network = "float16" in built.network.tensor_dtypes
    on_build_gpu = not rt.flavor.chooses_targets or options.compute_capabilities == ("current",)
    manifest = {
        "format": FORMAT,
        "kind": "engine",
        "model": model,
        "precision": options.precision,
        "request": request,
        "file": {"name": paths.engine.name, "sha256": sha256_file(paths.engine), "bytes": built.bytes},
        "checkpoint": {"path": str(checkpoint), "sha256": onnx_manifest["checkpoint"]["sha256"]},
        "onnx": {"name": paths.onnx.name, "sha256": onnx_manifest["file"]["sha256"], "opset": onnx_manifest["opset"],
                 "exporter": onnx_manifest["exporter"], "fp32_nodes": onnx_manifest["fp32_nodes"]},
        "inputs": inputs,
        "outputs": [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in built.network.outputs],
        "tensorrt": request["tensorrt"],
        "target": {
            "compute_capabilities": engine_targets(rt.flavor.name, options.compute_capabilities, host["gpu"]),
            "requested": request["targets"],
            "gpu": host["gpu"] if on_build_gpu else None,
        },
        "network": {
            "layers": built.network.layers,
            "layer_types": built.network.layer_types,
            "tensor_dtypes": built.network.tensor_dtypes,
            "float32_compute_layers": built.network.compute_layers("float32") if half_network else [],
        },
        "build": {
            "host": host,
            "seconds": round(built.seconds, 3),
            "finished": now(),
            "timing_cache": settings.timing_cache.name if rt.flavor.timing_cache else None,
            "command": options.for_model(model, checkpoint).command(),
            "options": options.to_json(),
        },
    }
    write_manifest(paths.engine_manifest, manifest)
    log.info("%s %s: wrote %s in %.1f s (%.1f MB)", model, options.precision, paths.engine, built.seconds,
             built.bytes / 1e6)
    return "built", built.seconds, reason


def build_engines(options: BuildOptions, *, show_progress: bool = True) -> BuildReport:
    """Exports and builds every network whose checkpoint is given; up-to-date artifacts are kept.

    Everything that can be checked without work (paths, shapes, the TensorRT import, the
    compute capabilities) is checked before the first export starts.
    """
    start = time.perf_counter()
    options.validate()
    rt = None
    if not options.onnx_only:
        rt = load_tensorrt(options.flavor)
        resolve_targets(rt, options.compute_capabilities)
        if options.compute_capabilities == ("current",) and current_gpu() is None:
            raise InputError("--compute-capabilities current needs a GPU on this machine; name the targets instead")
    Path(options.out).mkdir(parents=True, exist_ok=True)

    results = []
    for model, checkpoint in options.checkpoints().items():
        paths = artifact_paths(options.out, model, options.precision)
        onnx_manifest, onnx_status, export_seconds, reason = _ensure_onnx(options, model, checkpoint)
        engine_status, build_seconds = None, 0.0
        if rt is not None:
            engine_status, build_seconds, engine_reason = _ensure_engine(
                options, model, checkpoint, rt, onnx_manifest, show_progress
            )
            reason = reason or engine_reason  # the root cause: a new checkpoint, not the ONNX it changed
        results.append(ModelResult(
            model=model, precision=options.precision, onnx=paths.onnx, onnx_status=onnx_status,
            engine=None if rt is None else paths.engine, engine_status=engine_status, reason=reason,
            export_seconds=export_seconds, build_seconds=build_seconds,
            onnx_bytes=paths.onnx.stat().st_size,
            engine_bytes=None if rt is None else paths.engine.stat().st_size,
        ))
    return BuildReport(
        results=tuple(results),
        flavor=None if rt is None else rt.flavor.name,
        tensorrt_version=None if rt is None else rt.version,
        seconds=time.perf_counter() - start,
    )
