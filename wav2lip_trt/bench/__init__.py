"""``bench``: end-to-end speed and memory of each backend, and of the original algorithm, in one run.

Every measured run is a fresh process (``python -m wav2lip_trt.bench --child SPEC``), so its peak
RSS is its own and no run warms the next one's caches; the modes take turns, repeat by repeat,
so a noisy machine slows them alike. The ``reference`` mode runs the original ``inference.py``
structure (:func:`wav2lip_trt.reference.run_reference`: every frame in memory, FP32 eager,
Python post-processing, AVI then an ffmpeg mux) on the same clip, so the speed-up over the
original is measured on the same machine in the same run.

The timing helpers (:func:`time_callable`, :class:`Spread`) and the hot-stage cases
(:func:`hot_stage_cases`, :func:`model_cases`) are shared with the pytest-benchmark suite in
``benchmarks/``.

The package, along its seams (imports point one way: timing <- cases; timing, options <- report;
all four <- runner; child stands alone and is what ``__main__`` runs):

- ``timing``: :class:`Spread`, :func:`time_callable`, :class:`Case`, :func:`time_cases`
- ``cases``: the synthetic hot-stage and network cases
- ``options``: :data:`MODES`, :class:`BenchOptions`
- ``report``: :class:`Clip`, :class:`Run`, :class:`ModeResult`, :class:`BenchReport`
- ``runner``: :func:`run_bench`, one measured process per run
- ``child``: the measured process itself
"""

from __future__ import annotations

from .cases import hot_stage_cases, model_cases, synthetic_s3fd_outputs
from .options import MODES, BenchOptions
from .report import BenchReport, Clip, ModeResult, Run
from .runner import BenchRunError, run_bench
from .timing import Case, Spread, time_callable, time_cases

__all__ = [
    "MODES", "BenchOptions", "BenchReport", "BenchRunError", "Case", "Clip", "ModeResult", "Run", "Spread",
    "hot_stage_cases", "model_cases", "run_bench", "synthetic_s3fd_outputs", "time_callable", "time_cases",
]
