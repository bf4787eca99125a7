"""ONNX Runtime backend: the exported graph itself, on CPU (or CUDA when onnxruntime-gpu is installed)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from ..errors import MissingDependencyError
from ..execution.handoff import on_stream
from .base import runner_stream


class OnnxRuntimeRunner:
    """Runs an ``.onnx`` file written by ``build-engines`` (same tensor names as the torch runner).

    ONNX Runtime is fed NumPy arrays, i.e. host copies, even with its CUDA provider. On CUDA,
    :meth:`infer` therefore synchronises :attr:`stream` before reading its inputs back: the one
    place in the project where a stream sync is by design (this backend is for checking the
    export, not for speed). Its outputs are uploaded on :attr:`stream`, as the runner contract
    (:class:`~wav2lip_trt.runners.base.Runner`) says.
    """

    def __init__(self, onnx_path: str | Path, *, name: str = "onnxruntime", device: torch.device | str = "cpu",
                 threads: int | None = None, stream: torch.cuda.Stream | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise MissingDependencyError("the onnxruntime backend needs: pip install 'wav2lip-trt[onnx]'") from None
        self.name = name
        self.device = torch.device(device)
        providers = ["CPUExecutionProvider"]
        if self.device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise MissingDependencyError("onnxruntime on CUDA needs onnxruntime-gpu (pip install onnxruntime-gpu)")
            providers.insert(0, "CUDAExecutionProvider")
        self.stream = runner_stream(self.device, stream)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        self.input_dtypes = {n: torch.float32 for n in self.input_names}  # the export's I/O is FP32 at any precision

    def infer(self, feed: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with on_stream(self.stream):
            if self.stream is not None:
                self.stream.synchronize()  # by design: ONNX Runtime reads host copies of the inputs
            arrays = {n: np.ascontiguousarray(feed[n].detach().cpu().numpy(), dtype=np.float32)
                      for n in self.input_names}
            outputs = self.session.run(list(self.output_names), arrays)
            return {n: torch.from_numpy(o).to(self.device) for n, o in zip(self.output_names, outputs)}

    def __enter__(self) -> "OnnxRuntimeRunner":
        return self

    def __exit__(self, *exc: object) -> None:
        return None
