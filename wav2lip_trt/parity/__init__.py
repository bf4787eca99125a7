"""``parity``: the same seeded inputs through a ladder of runners, each compared with torch FP32.

The ladder climbs one change at a time, so the first rung that disagrees names what broke:

    torch fp32 (reference, CPU)
      -> onnxruntime fp32   the ONNX export        (same graph, another runtime)
      -> tensorrt fp32      the TensorRT build     (the same ONNX file, compiled)
      -> tensorrt fp16      FP16 precision         (the same build, half precision)
      -> torch fp16 (CUDA)  FP16 precision         (torch with the L2Norm-in-FP32 policy)

Like Polygraphy's comparator, every output gets max/mean/median/p99 absolute and relative errors
and the smallest tolerance that would have passed; images also get a PSNR, and detections the IoU
of the chosen face per frame and the number of frames whose chosen face changed. An element
passes when ``|out - ref| <= atol`` or ``|out - ref| <= rtol * |ref|``.

Rungs that cannot run on this machine (TensorRT without a GPU, a missing package) are skipped
with the reason; a rung the user asked for by name fails instead.

The package, along its seams (imports point one way: options <- metrics <- detection <- report <- runner):

    options    the rungs, the tolerances, :class:`ParityOptions`
    metrics    error statistics of tensors, IoU of chosen boxes
    feeds      the seeded random inputs
    detection  ``--detect-every/--detect-size``: chosen boxes against full detection
    report     the checks, the verdict, the table and the JSON
    runner     :func:`run_parity`, the ladder itself
"""

from .detection import DetectionCheck
from .feeds import MEL_RANGE, s3fd_feed, wav2lip_feed
from .metrics import (
    BoxComparison, TensorComparison, abs_rel_errors, box_iou, compare_boxes, compare_tensors, psnr,
    required_tolerances,
)
from .options import (
    DEFAULT_TOLERANCES, INPUT_CHOICES, REFERENCE, RUNG_NAMES, RUNGS, SAME_FACE_IOU, Box, ParityOptions, Rung,
    ToleranceTable, Tolerances, parse_tolerance, tolerances_with,
)
from .report import Check, ParityReport, RungResult
from .runner import run_parity

__all__ = [
    "Box", "BoxComparison", "Check", "DEFAULT_TOLERANCES", "DetectionCheck", "INPUT_CHOICES", "MEL_RANGE",
    "ParityOptions", "ParityReport", "REFERENCE", "RUNGS", "RUNG_NAMES", "Rung", "RungResult", "SAME_FACE_IOU",
    "TensorComparison", "ToleranceTable", "Tolerances", "abs_rel_errors", "box_iou", "compare_boxes",
    "compare_tensors", "parse_tolerance", "psnr", "required_tolerances", "run_parity", "s3fd_feed",
    "tolerances_with", "wav2lip_feed",
]
