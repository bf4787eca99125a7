"""JSON sidecars that say what an ONNX file or engine was made from, and the checks that use them.

``s3fd.fp16.onnx`` has ``s3fd.fp16.onnx.json``; ``s3fd.fp16.engine`` has ``s3fd.fp16.engine.json``.
Each sidecar holds a ``request``: everything the artifact depends on. ``build-engines`` redoes an
artifact exactly when its request changed (or its file no longer matches the recorded hash), and
the runtime refuses an engine whose checkpoint, TensorRT or GPU does not match.

A sidecar is read as any file a user may have edited or copied half-way: with the bounded JSON
reader, as a regular file (a FIFO there never blocks), and checked for the shape every reader here
relies on. One that fails any of that is "no readable manifest": the artifact is rebuilt, and the
runtime refuses the engine with the command that rebuilds it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import EngineError
from ..files import atomic_write_text, read_regular_file, sha256_file
from ..json_input import JsonInputError, load_json_text
from ..tensor_names import SCORING_GRAPHS
from .builder import FLAVORS, RTX_PORTABLE_TARGETS
from .options import BuildOptions

FORMAT = 1


@dataclass(frozen=True)
class ArtifactPaths:
    """Where ``build-engines`` puts one network's files for one precision."""

    onnx: Path
    onnx_manifest: Path
    engine: Path
    engine_manifest: Path


def artifact_paths(out: str | Path, model: str, precision: str) -> ArtifactPaths:
    stem = Path(out) / f"{model}.{precision}"
    return ArtifactPaths(
        onnx=stem.with_name(stem.name + ".onnx"),
        onnx_manifest=stem.with_name(stem.name + ".onnx.json"),
        engine=stem.with_name(stem.name + ".engine"),
        engine_manifest=stem.with_name(stem.name + ".engine.json"),
    )


def timing_cache_path(out: str | Path, flavor: str) -> Path:
    """One cache per flavour: a cache from the other flavour would only be rejected."""
    return Path(out) / f"timing-cache.{flavor}.bin"


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def current_gpu() -> dict[str, str] | None:
    """The first CUDA GPU's name and compute capability (``"8.9"``), or None without one."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return {"name": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}
    except Exception:  # a broken CUDA install must not break a CPU build
        pass
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        return None
    if not out or "," not in out[0]:
        return None
    name, cap = (part.strip() for part in out[0].rsplit(",", 1))
    return {"name": name, "compute_capability": cap}


def build_host() -> dict[str, Any]:
    import torch

    return {
        "hostname": platform.node(),
        "os": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "wav2lip_trt": __version__,
        "gpu": current_gpu(),
    }


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(manifest, indent=2) + "\n")


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The sidecar's content, or None when it is missing, unreadable, of another format or of another shape.

    Not a regular file (a FIFO, a device; a link to one), not UTF-8, not JSON the bounded reader
    takes (nesting, huge numbers), not an object, or without the fields :data:`SHAPES` lists for
    its ``kind``: every reader of the result may then index those fields without a check.
    """
    try:
        data = load_json_text(read_regular_file(Path(path), follow_links=True).decode("utf-8"))
    except (OSError, ValueError):  # JsonInputError and UnicodeDecodeError are ValueErrors
        return None
    if not (isinstance(data, dict) and data.get("format") == FORMAT and data.get("kind") in SHAPES):
        return None
    return data if _fits(data, SHAPES[data["kind"]]) else None


_Shape = Any  # a type, a predicate, {key: shape} (a dict with at least those keys) or [shape] (a list of those)


def _fits(value: Any, shape: _Shape) -> bool:
    if isinstance(shape, dict):
        return isinstance(value, dict) and all(key in value and _fits(value[key], inner)
                                               for key, inner in shape.items())
    if isinstance(shape, list):
        return isinstance(value, list) and all(_fits(item, shape[0]) for item in value)
    if isinstance(shape, type):
        return isinstance(value, shape) and not (shape is int and isinstance(value, bool))
    return bool(shape(value))


def _known_model(value: Any) -> bool:
    return isinstance(value, str) and (value in ("s3fd", "wav2lip") or value in SCORING_GRAPHS)


def _optional_profile(value: Any) -> bool:
    return value is None or _fits(value, {"min": [int], "opt": [int], "max": [int]})


_COMMON = {"model": _known_model, "precision": str, "request": dict, "file": {"sha256": str},
           "checkpoint": {"sha256": str}}
SHAPES: dict[str, dict[str, _Shape]] = {
    "onnx": {**_COMMON, "opset": int, "exporter": str, "fp32_nodes": [str]},
    "engine": {**_COMMON, "tensorrt": {"flavor": lambda name: isinstance(name, str) and name in FLAVORS,
                                       "version": str},
               "target": {"compute_capabilities": [str]}, "inputs": [{"name": str, "profile": _optional_profile}],
               "build": {"options": dict}},
}
"""What each kind of sidecar holds, as far as this package reads it (what engines.py writes holds more)."""


_REASONS = {
    "checkpoint_sha256": "the checkpoint changed",
    "model": "another network",
    "precision": "another precision",
    "exporter": "another exporter (torch or opset changed)",
    "wav2lip_trt": "another wav2lip-trt version",
    "onnx_sha256": "the ONNX changed",
    "profile": "other profile shapes",
    "tensorrt": "another TensorRT flavour or version",
    "targets": "other compute capabilities",
    "workspace_bytes": "another workspace limit",
}


def stale_reason(manifest_path: Path, artifact: Path, request: dict[str, Any]) -> str | None:
    """Why ``artifact`` must be (re)made for ``request``; None when it is up to date."""
    if not artifact.is_file():
        return "not built yet"
    manifest = read_manifest(manifest_path)
    if manifest is None:
        return "no readable manifest"
    recorded = manifest.get("request", {})
    for key, value in request.items():
        if recorded.get(key) != value:
            return _REASONS.get(key, f"{key} changed")
    if manifest.get("file", {}).get("sha256") != sha256_file(artifact):
        return "the file does not match its manifest"
    return None


def _rebuild(manifest: dict[str, Any] | None, engine: Path, checkpoint: Path, **changes: Any) -> str:
    model, precision = (manifest or {}).get("model"), (manifest or {}).get("precision")
    if model is None:
        model, _, rest = engine.name.partition(".")
        precision = rest.split(".")[0] or "fp16"

    def command(options: BuildOptions) -> str:
        options = options.for_model(model, checkpoint)
        return replace(options, out=engine.parent, precision=precision or options.precision, **changes).command()

    try:
        return command(BuildOptions.from_json((manifest or {}).get("build", {}).get("options", {})))
    except (TypeError, ValueError, KeyError, IndexError, AttributeError):  # options no version of ours wrote
        return command(BuildOptions())


def _cc(value: str | tuple[int, int]) -> str:
    return value if isinstance(value, str) else f"{value[0]}.{value[1]}"


def check_engine(
    engine_path: str | Path,
    *,
    checkpoint_path: str | Path,
    flavor: str,
    version: str,
    compute_capability: str | tuple[int, int],
    gpu_name: str | None = None,
) -> dict[str, Any]:
    """Refuses an engine that does not belong to this checkpoint, TensorRT or GPU; returns its manifest.

    ``flavor``/``version`` describe the runtime that will load the engine (``tensorrt-rtx``,
    ``1.7.1.116``); ``compute_capability`` is the GPU's, e.g. ``(8, 9)`` or ``"8.9"``. Every
    refusal is one :class:`EngineError` line that ends with the command that rebuilds the engine.
    """
    from ..checkpoints import file_sha256

    engine, checkpoint = Path(engine_path), Path(checkpoint_path)
    manifest_path = engine.with_name(engine.name + ".json")
    manifest = read_manifest(manifest_path)
    cc = _cc(compute_capability)
    gpu = f"{gpu_name} ({cc})" if gpu_name else f"compute capability {cc}"

    if not engine.is_file():
        raise EngineError(f"engine not found: {engine}; build it with: {_rebuild(manifest, engine, checkpoint)}")
    if manifest is None:
        raise EngineError(f"{engine} has no readable manifest {manifest_path.name}; rebuild it with: "
                          f"{_rebuild(None, engine, checkpoint, force=True)}")
    if manifest.get("file", {}).get("sha256") != sha256_file(engine):
        raise EngineError(f"{engine} does not match its manifest (modified or partly copied); rebuild it with: "
                          f"{_rebuild(manifest, engine, checkpoint, force=True)}")
    built_from = manifest["checkpoint"]["sha256"]
    if file_sha256(checkpoint) != built_from:
        raise EngineError(f"{engine} was built from another checkpoint (sha256 {built_from[:12]}…, not that of "
                          f"{checkpoint}); rebuild it with: {_rebuild(manifest, engine, checkpoint)}")
    trt = manifest["tensorrt"]
    if (trt["flavor"], trt["version"]) != (flavor, version):
        label = FLAVORS[flavor].label if flavor in FLAVORS else flavor
        raise EngineError(f"{engine} was built with {FLAVORS[trt['flavor']].label} {trt['version']} but this runtime is "
                          f"{label} {version}; rebuild it with: "
                          f"{_rebuild(manifest, engine, checkpoint, flavor=flavor)}")
    targets = manifest["target"]["compute_capabilities"]
    if cc not in targets:
        if not FLAVORS[flavor].chooses_targets:
            fix = _rebuild(manifest, engine, checkpoint, flavor=flavor)
            raise EngineError(f"{engine} was built for {', '.join(targets)} but this GPU is {gpu}; "
                              f"rebuild it on this GPU with: {fix}")
        if cc.startswith("9."):
            fix = _rebuild(manifest, engine, checkpoint, flavor="tensorrt", compute_capabilities=())
            raise EngineError(f"{engine} is a TensorRT-RTX engine, which does not support {gpu} (Hopper); "
                              f"install NVIDIA's tensorrt and rebuild with: {fix}")
        fix = _rebuild(manifest, engine, checkpoint, compute_capabilities=(cc,))
        raise EngineError(f"{engine} targets compute capabilities {', '.join(targets)} but this GPU is {gpu}; "
                          f"rebuild it with: {fix}")
    return manifest


def engine_targets(flavor: str, requested: tuple[str, ...], gpu: dict[str, str] | None) -> list[str]:
    """Compute capabilities an engine will run on, as recorded in its manifest."""
    if not FLAVORS[flavor].chooses_targets or requested == ("current",):
        return [gpu["compute_capability"]] if gpu else []
    return list(requested) if requested else list(RTX_PORTABLE_TARGETS)
