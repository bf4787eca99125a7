"""Face detection storage: the on-disk cache of raw S3FD boxes and the JSON boxes-file format.

Both hold RAW boxes (x1, y1, x2, y2 before ``--pads`` and smoothing), so what they give back goes
through the same pads, smoothing and missing-face policy as a fresh S3FD detection. The names below
are imported on first use, so importing one submodule of this package does not load the others.
"""

from __future__ import annotations

from ..lazy import lazy_exports


_EXPORTS = {
    "SCHEMA_VERSION": "cache",
    "CacheInfo": "cache",
    "CachedDetections": "cache",
    "DetectionCache": "cache",
    "DetectionKey": "cache",
    "array_to_boxes": "cache",
    "boxes_to_array": "cache",
    "cache_info": "cache",
    "content_sha256": "cache",
    "default_cache_dir": "cache",
    "box_problem": "boxes_file",
    "read_boxes": "boxes_file",
    "write_boxes": "boxes_file",
}
__all__ = list(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
