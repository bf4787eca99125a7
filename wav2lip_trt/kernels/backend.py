"""Which implementation runs a kernel: the Triton kernel or its pure-torch reference.

One rule for every kernel: ``impl="auto"`` picks Triton for CUDA tensors (when triton is
installed) and the torch reference elsewhere; ``WAV2LIP_TRT_KERNELS=torch|triton`` overrides
``auto`` for a whole run. An explicit ``impl="triton"`` on CPU tensors runs the same kernel
source in Triton's interpreter, which is how the tests check the kernels without a GPU.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from types import ModuleType
from typing import Literal

import torch

from ..errors import InputError, MissingDependencyError

Impl = Literal["auto", "triton", "torch"]
IMPLS = ("auto", "triton", "torch")
ENV_VAR = "WAV2LIP_TRT_KERNELS"  # overrides impl="auto": "torch" or "triton"

_KERNELS = "wav2lip_trt.kernels._triton"
_INTERPRETED = "wav2lip_trt.kernels._triton_interpreted"


def triton_available() -> bool:
    """True when the triton package can be imported (it is an optional dependency)."""
    return importlib.util.find_spec("triton") is not None


def resolve_impl(impl: str, device: torch.device) -> Literal["triton", "torch"]:
    """The implementation that ``impl`` means for tensors on ``device``."""
    if impl not in IMPLS:
        raise InputError(f"unknown kernel implementation {impl!r}; choose one of {', '.join(IMPLS)}")
    if impl == "auto":
        override = os.environ.get(ENV_VAR, "").strip().lower()
        if override in ("torch", "triton"):
            impl = override
        elif override not in ("", "auto"):
            raise InputError(f"{ENV_VAR}={override!r} is not one of auto, torch, triton")
        else:
            impl = "triton" if device.type == "cuda" and triton_available() else "torch"
    if impl == "triton" and device.type not in ("cuda", "cpu"):
        raise InputError(f"the Triton kernels run on CUDA tensors (or on CPU in the interpreter), not {device}")
    return impl  # type: ignore[return-value]


def triton_kernels(device: torch.device) -> ModuleType:
    """The module of ``@triton.jit`` kernels suited to tensors on ``device``.

    CUDA tensors get the compiled kernels. CPU tensors get a second copy of the same source
    whose kernels are wrapped in Triton's interpreter, so the result does not depend on
    whether ``TRITON_INTERPRET=1`` was set before the first import (triton reads it when a
    function is decorated) and interpreted and compiled kernels can live in one process.
    """
    if not triton_available():
        raise MissingDependencyError(
            "the Triton kernels need the triton package: pip install 'wav2lip-trt[triton]' (or impl='torch')"
        )
    if device.type == "cuda":
        return importlib.import_module(_KERNELS)
    module = sys.modules.get(_INTERPRETED)
    if module is None:
        module = _load_interpreted()
        sys.modules[_INTERPRETED] = module
    return module


def launch(kernel: object, grid: tuple[int, ...], *args: object, **kwargs: object) -> None:
    """Launch a kernel of :func:`triton_kernels` without FMA contraction (it would change the bits)."""
    kernel[grid](*args, enable_fp_fusion=False, **kwargs)  # type: ignore[index]


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _load_interpreted() -> ModuleType:
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    origin = importlib.util.find_spec(_KERNELS)
    if origin is None or origin.origin is None:
        raise MissingDependencyError(f"cannot locate {_KERNELS}")
    spec = importlib.util.spec_from_file_location(_INTERPRETED, origin.origin)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # Kernels call their helpers through the module globals, so wrapping every function
    # jitted there makes the whole call graph interpreted.
    for name, value in list(vars(module).items()):
        if isinstance(value, JITFunction) and value.fn.__module__ == _INTERPRETED:
            setattr(module, name, InterpretedFunction(value.fn))
    return module
