"""Device kernels for the stages around the networks, each with a pure-torch reference beside it.

With FP16 engines the networks stop being the whole cost, so detection pre/post-processing,
the crop -> generator-input step and paste-back run as a handful of fused kernels on
device-resident frames. Every function takes ``impl="auto" | "triton" | "torch"``: ``auto``
runs the Triton kernel on CUDA tensors and the torch reference elsewhere (override with
``WAV2LIP_TRT_KERNELS``); ``triton`` on CPU tensors runs the kernel in Triton's interpreter.
Both give the reference pipeline's numbers (see each module for the exact contract).
"""

from .backend import ENV_VAR, IMPLS, Impl, resolve_impl, triton_available
from .crop import crop_faces_device, crop_to_generator_input, unit_table
from .paste import BLENDS, FEATHER_DIVISOR, feather_weights, paste_back_batch
from .postprocess import (
    DeviceFaces,
    choose_faces_device,
    choose_faces_packed,
    detections_device,
    finish_packed,
    nms_indices,
    nms_sorted,
)
from .preprocess import s3fd_preprocess
from .resize import resize_linear

__all__ = [
    "BLENDS",
    "DeviceFaces",
    "ENV_VAR",
    "FEATHER_DIVISOR",
    "IMPLS",
    "Impl",
    "choose_faces_device",
    "choose_faces_packed",
    "crop_faces_device",
    "crop_to_generator_input",
    "detections_device",
    "feather_weights",
    "finish_packed",
    "nms_indices",
    "nms_sorted",
    "paste_back_batch",
    "resize_linear",
    "resolve_impl",
    "s3fd_preprocess",
    "triton_available",
    "unit_table",
]
