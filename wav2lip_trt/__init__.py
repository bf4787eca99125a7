"""wav2lip-trt: Wav2Lip lip-sync with S3FD detection, reference-exact in PyTorch, fast on TensorRT.

Public API (imported on first use, so ``import wav2lip_trt`` stays light)::

    from wav2lip_trt import InferenceOptions, run_inference
    result = run_inference(InferenceOptions(checkpoint_path=..., face=..., audio=..., outfile=...))

    from wav2lip_trt import Session           # models loaded once, many lip-syncs
    with Session("wav2lip.pth", "s3fd.pth", device="cuda") as session:
        session.infer("speaker.mp4", "en.wav", "out/en.mp4")

Engines: :mod:`wav2lip_trt.build_engines`; comparisons: :func:`run_parity`; timing: :func:`run_bench`.
"""

from __future__ import annotations

from .lazy import lazy_exports


__version__ = "0.1.0"

_EXPORTS = {
    "InferenceOptions": "options",
    "InferenceResult": "session",
    "run_inference": "session",
    "Session": "session",
    "ParityOptions": "parity",
    "run_parity": "parity",
    "BenchOptions": "bench",
    "run_bench": "bench",
    "Wav2LipTrtError": "errors",
}
__all__ = ["__version__", *_EXPORTS]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
