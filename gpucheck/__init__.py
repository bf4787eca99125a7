"""gpu-check: prove the GPU path in one short run on a bare GPU machine, and rehearse every step on the CPU.

    make gpu-check [OUT=DIR]          # python3 -m gpucheck --out DIR; without a GPU: one line, exit 0
    make gpu-rehearse                 # python3 -m gpucheck --rehearse: every step's flow on the CPU, tiny sizes
    make gpu-stage                    # what runs 1 and 2 upload (.gpu/run1, .gpu/run2): ffmpeg, TensorRT-RTX

Modules, one job each: ``steps`` and ``runs`` (what each step does), ``live`` (the live lip-sync step and
its child), ``child`` (the modes the runs execute
in: CSAN, sync debug, event timing), ``verdicts`` (PASSED / FAILED / NOT RUN from the evidence: pure
functions, tested on the CPU), ``logs`` (reading the tools' output), ``runner`` (the time budget and the
children's deadlines), ``report`` (summary.md / summary.json), ``environment`` and ``staging`` (the
machine, and what it lacks). This package lives beside wav2lip_trt, not in it: it needs the repository's
tests/ and imports the library; the library never imports it.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
