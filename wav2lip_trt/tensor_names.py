"""Tensor names shared by the ONNX export and every runner.

They live in a module of their own so that imports point one way: ``runners`` may import
``build_engines`` (the TensorRT runner loads and checks engines with it), while ``build_engines``
needs only these names and so never imports ``runners``.
"""

from __future__ import annotations

S3FD_INPUTS = ("image",)
S3FD_OUTPUTS = tuple(f"{kind}{level}" for level in range(1, 7) for kind in ("cls", "reg"))
"""Raw S3FD head outputs in network order: cls1, reg1, ..., cls6, reg6 (no softmax)."""

WAV2LIP_INPUTS = ("mel", "face")
WAV2LIP_OUTPUTS = ("pred",)
