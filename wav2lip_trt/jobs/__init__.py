"""Many lip-syncs: a jobs file run by a pool of workers, each holding one session, locally or on Ray.

    from wav2lip_trt.jobs import BatchOptions, run_batch
    report = run_batch(BatchOptions(jobs_file=Path("jobs.jsonl"), checkpoint_path=Path("wav2lip.pth")))

The names below are imported on first use, so importing the package loads neither torch nor Ray.
"""

from __future__ import annotations

from ..lazy import lazy_exports


_EXPORTS = {
    "BatchOptions": "batch",
    "BatchReport": "batch",
    "run_batch": "batch",
    "JobSpec": "spec",
    "read_jobs": "spec",
    "Outcome": "results",
    "read_results": "results",
    "is_done": "results",
}
__all__ = list(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
