"""Verdicts: what a step's evidence proves. Pure functions over files and log text, tested on the CPU.

Every step ends PASSED, FAILED or NOT RUN with its reason. A step passes only on work it did: a
verdict that would pass on nothing (no frames compared, no test run, a sanitizer that saw no thread)
is NOT RUN instead, so the summary can never say PROVEN by accident.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .logs import parse_compute_sanitizer, parse_sanitizer_log, parse_sync_warnings

PASSED, FAILED, NOT_RUN = "passed", "failed", "not run"
STATUSES = (PASSED, FAILED, NOT_RUN)

# CSAN: the pipeline starts a decode and a writer thread; fewer covered means part of the run was unchecked.
REQUIRED_CSAN_THREADS = 2
# Sync debug: per-batch synchronisations designed into the pipeline, by name (site -> why); anything else
# that grows with the clip's length fails the step.
DESIGNED_SYNCS: dict[str, str] = {
    "wav2lip_trt/frame_ops.py": "detection boxes to the host for smoothing: one event wait per detection batch",
}


@dataclass(frozen=True)
class Verdict:
    """A step's outcome; ``work`` counts what was checked (frames, tests, runs) and must be > 0 to pass."""

    status: str
    reason: str
    work: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}")


def passed(reason: str, work: int, **details: Any) -> Verdict:
    """PASSED when ``work`` > 0, else NOT RUN: no step passes on zero work."""
    if work <= 0:
        return Verdict(NOT_RUN, f"did nothing to judge ({reason})", 0, details)
    return Verdict(PASSED, reason, work, details)


def failed(reason: str, work: int = 0, **details: Any) -> Verdict:
    return Verdict(FAILED, reason, work, details)


def not_run(reason: str, **details: Any) -> Verdict:
    return Verdict(NOT_RUN, reason, 0, details)


# ---- the summary's first line -------------------------------------------------------------------------


def headline(steps: Sequence[Any], *, rehearsal: bool = False) -> str:
    """PROVEN only when every required step passed; every failed and not-run step (and test) by name."""
    required = [s for s in steps if getattr(s, "required", True)]
    bad = [s.name for s in steps if s.status == FAILED]
    missing = [f"{s.name} ({s.summary})" for s in steps if s.status == NOT_RUN]
    missing += [f"{s.name}: {item}" for s in steps if s.status == PASSED for item in s.details.get("not_run", ())]
    proven = bool(required) and all(s.status == PASSED for s in required) and not rehearsal
    head = ("REHEARSAL on the CPU, proves the check and not the GPU: " if rehearsal else "") + (
        f"PROVEN: all {len(required)} required steps passed" if proven else "NOT PROVEN")
    parts = ([f"failed: {', '.join(bad)}"] if bad else []) + ([f"not run: {'; '.join(missing)}"] if missing else [])
    return head + (" - " + "; ".join(parts) if parts else "")


# ---- asynchronous determinism: hashes of --save-frames --------------------------------------------------


def hash_frames(folder: Path) -> dict[str, str]:
    """File name -> SHA-256 of the decoded pixels (and shape) of every image in ``folder``."""
    import cv2

    hashes = {}
    for path in sorted(Path(folder).glob("*.png")):
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is None:
            hashes[path.name] = "unreadable"
            continue
        digest = hashlib.sha256(repr(image.shape).encode())
        digest.update(image.tobytes())
        hashes[path.name] = digest.hexdigest()
    return hashes


def judge_determinism(runs: Mapping[str, Mapping[str, str]]) -> Verdict:
    """Every run's frames bit-identical to the first run's: any difference, missing or extra frame fails."""
    if len(runs) < 2:
        return not_run(f"needs at least two runs to compare, got {len(runs)}")
    (ref_name, ref), *others = runs.items()
    if not ref:
        return not_run(f"the {ref_name} run saved no frames")
    problems, compared = [], 0
    for name, hashes in others:
        missing = sorted(set(ref) - set(hashes))
        extra = sorted(set(hashes) - set(ref))
        differ = sorted(k for k in set(ref) & set(hashes) if ref[k] != hashes[k])
        compared += len(set(ref) & set(hashes))
        if missing or extra or differ:
            what = []
            if differ:
                what.append(f"{len(differ)} frames differ (first {', '.join(differ[:3])})")
            if missing:
                what.append(f"{len(missing)} frames missing")
            if extra:
                what.append(f"{len(extra)} extra frames")
            problems.append(f"{name} vs {ref_name}: " + ", ".join(what))
    if problems:
        return failed("; ".join(problems), compared)
    return passed(f"{len(ref)} frames bit-identical across {', '.join(runs)}", compared, frames=len(ref))


# ---- CSAN with a positive control ---------------------------------------------------------------------------


def judge_csan(control_log: str, runs: Mapping[str, str], *, required_threads: int = REQUIRED_CSAN_THREADS) -> Verdict:
    """The control's deliberately missing wait must be reported (else the sanitizer is blind); each run:
    zero reports, at least ``required_threads`` worker threads covered, none left uncovered, finished."""
    control = parse_sanitizer_log(control_log)
    if control["reports"] == 0:
        return failed("blind: the positive control's missing cross-thread wait was not reported", 0, control=control)
    problems, details = [], {"control": control}
    for name, text in runs.items():
        parsed = parse_sanitizer_log(text)
        details[name] = parsed
        if parsed["reports"]:
            problems.append(f"{name}: {parsed['reports']} CSAN report(s) in {', '.join(parsed['kernels']) or '?'}")
        if parsed["uncovered_threads"]:
            problems.append(f"{name}: thread(s) not covered: {', '.join(parsed['uncovered_threads'])}")
        covered = parsed["worker_threads_covered"]
        if covered is None or covered < required_threads:
            problems.append(f"{name}: {covered or 0} worker threads covered, {required_threads} required")
        if not parsed["finished"]:
            problems.append(f"{name}: the run did not finish")
    if problems:
        return failed("; ".join(problems), len(runs), **details)
    return passed(f"control reported; zero reports in {', '.join(runs)}", len(runs), **details)


def judge_compute_sanitizer(logs: Mapping[str, str]) -> Verdict:
    """compute-sanitizer runs (tool -> log): each ran tests that passed and ended "0 errors"."""
    problems, details, tests = [], {}, 0
    for tool, text in logs.items():
        parsed = parse_compute_sanitizer(text)
        details[tool] = parsed
        if parsed["errors"] is None:
            problems.append(f"{tool}: no ERROR SUMMARY (the tool did not finish)")
        elif parsed["errors"]:
            problems.append(f"{tool}: {parsed['errors']} errors ({'; '.join(parsed['kinds'][:3])})")
        if parsed["tests_failed"]:
            problems.append(f"{tool}: {parsed['tests_failed']} tests failed under the tool")
        tests += parsed["tests_passed"]
        if not parsed["tests_passed"] and parsed["errors"] == 0:
            return not_run(f"{tool}: no kernel test ran ({parsed['tests_skipped']} skipped)", **details)
    if problems:
        return failed("; ".join(problems), tests, **details)
    return passed(f"{', '.join(logs)}: 0 errors over {tests} kernel test runs", tests, **details)


# ---- sync-debug, judged -----------------------------------------------------------------------------------


def judge_syncs(short: tuple[str, int], long: tuple[str, int], *, designed: Mapping[str, str] = DESIGNED_SYNCS,
                repo: Path | None = None) -> Verdict:
    """Syncs must not grow with the clip: between a short and a long run (log, frames), a site may add
    syncs only if it is a designed per-batch sync (at most one per two extra frames); load-time syncs cancel."""
    (short_log, short_frames), (long_log, long_frames) = short, long
    if "sync debug mode 'warn'" not in short_log or "sync debug mode 'warn'" not in long_log:
        return not_run("sync debug mode was not set (no CUDA in the child)")
    if short_frames <= 0 or long_frames <= short_frames:
        return not_run(f"needs two runs of different lengths with frames, got {short_frames} and {long_frames}")
    kw = {} if repo is None else {"repo": repo}
    a, b = parse_sync_warnings(short_log, **kw), parse_sync_warnings(long_log, **kw)
    extra_frames = long_frames - short_frames
    growth = {site: n - a["sites"].get(site, 0) for site, n in b["sites"].items() if n > a["sites"].get(site, 0)}
    problems, allowed = [], {}
    for site, n in growth.items():
        name = next((key for key in designed if key in site), None)
        if name is not None and n <= math.ceil(extra_frames / 2) + 1:
            allowed[site] = n
        else:
            problems.append(f"{site}: +{n} syncs for {extra_frames} more frames")
    per_frame = (b["warnings"] - a["warnings"]) / extra_frames
    details = {"short": a, "long": b, "growth": growth, "allowed": allowed, "per_extra_frame": round(per_frame, 3),
               "frames": [short_frames, long_frames]}
    if problems:
        return failed("syncs grow with the clip: " + "; ".join(problems), extra_frames, **details)
    return passed(f"{a['warnings']} / {b['warnings']} syncs for {short_frames} / {long_frames} frames; growth only at "
                  f"designed sites ({', '.join(allowed) or 'none'})", extra_frames, **details)


# ---- pytest -m gpu ----------------------------------------------------------------------------------------

# Skip reasons that mean a package is missing: those tests did not run (listed as NOT RUN, never as passed).
MISSING_PACKAGE_MARKERS = ("could not import", "not installed", "no module named", "neither tensorrt nor tensorrt-rtx",
                           "no tensorrt loads")


def judge_pytest(junit: dict[str, Any] | None, returncode: int | None) -> Verdict:
    """A collection error or a failure fails; tests skipped for a missing package are listed as not run
    (``details["not_run"]``, named on the summary's first line); passing needs at least one passed test."""
    if junit is None:
        return failed(f"pytest wrote no report (exit {returncode})")
    counts, skipped = junit["counts"], junit["skipped"]
    missing = [f"{name} ({why})" for name, why in skipped if any(m in why.lower() for m in MISSING_PACKAGE_MARKERS)]
    details = {"counts": counts, "not_run": missing}
    if returncode not in (0, 5) or counts["errors"] or counts["failures"]:
        return failed(f"exit {returncode}: {counts['failures']} failed, {counts['errors']} errors "
                      f"(a collection error counts)", counts["passed"], **details)
    text = f"{counts['passed']} passed, {counts['skipped']} skipped"
    if missing:
        text += f", of which {len(missing)} for a missing package (not run)"
    return passed(text, counts["passed"], **details)


# ---- parity on CUDA ---------------------------------------------------------------------------------------


SCORE_TOLERANCE = {"fp32": 1e-3, "fp16": 2e-2}  # --score similarity mean, sync loss, quality mean vs the CPU
MIN_SAME_BOX_FRAMES = 0.5  # pixels are compared where the final boxes agree: at least this share of frames


def judge_parity(name: str, precision: str, comparison: dict[str, Any],
                 scores: tuple[dict[str, Any], dict[str, Any]] | None = None) -> list[str]:
    """Problems of one run against the CPU FP32 run (empty: within the parity ladder's tolerances for
    ``precision``, wav2lip_trt.parity.DEFAULT_TOLERANCES); ``comparison`` from :func:`compare_dumps`."""
    from wav2lip_trt.detection.cache import array_to_boxes
    from wav2lip_trt.parity import DEFAULT_TOLERANCES
    from wav2lip_trt.parity.metrics import compare_boxes

    tol = DEFAULT_TOLERANCES[precision]
    frames = comparison.get("frames") or {}
    if "count" not in frames:
        return [f"{name}: frame count or shape differs {frames}"]
    if not frames["count"]:
        return [f"{name}: no frames to compare"]
    problems = []
    raw = comparison.get("det_box_rows")
    if raw is None:
        problems.append(f"{name}: det_boxes missing or of another shape")
    else:
        boxes = compare_boxes(name, array_to_boxes(raw[0]), array_to_boxes(raw[1]), min_iou=tol.min_iou,
                              max_face_changes=tol.max_face_changes)
        if not boxes.passed:
            problems.append(boxes.describe_failure())
    if frames["same_box_fraction"] < MIN_SAME_BOX_FRAMES:
        problems.append(f"{name}: final boxes identical in only {frames['same_box_fraction']:.0%} of frames")
    if frames["same_box_max_diff"] > tol.frame_atol:
        problems.append(f"{name}: frames with identical boxes differ by {frames['same_box_max_diff']} levels "
                        f"(> {tol.frame_atol:g})")
    if scores is not None:
        ref, got = scores
        for key in ("similarity_mean", "sync_loss", "quality_mean"):
            a, b = ref.get(key), got.get(key)
            if a is None or b is None or abs(a - b) > SCORE_TOLERANCE[precision]:
                problems.append(f"{name}: --score {key} {b} vs CPU {a}")
    return problems


def compare_dumps(ref: Path, other: Path) -> dict[str, Any]:
    """Boxes and output frames of two ``--dump-intermediates`` folders, frame by frame; pixel statistics
    over the frames whose final boxes are identical (a moved box moves the whole face)."""
    import numpy as np

    out: dict[str, Any] = {}
    same_box = None
    for name in ("det_boxes", "boxes"):
        a, b = ref / f"{name}.npy", other / f"{name}.npy"
        if not (a.is_file() and b.is_file()):
            out[name] = None
            continue
        x, y = np.load(a), np.load(b)
        if x.shape != y.shape:
            out[name] = {"shape_ref": list(x.shape), "shape": list(y.shape), "equal_fraction": 0.0, "max_abs_diff": -1}
            continue
        equal = (x == y).reshape(len(x), -1).all(axis=1) if len(x) else np.ones(0, bool)
        out[name] = {"rows": int(len(x)), "equal_fraction": float(equal.mean()) if len(x) else 1.0,
                     "max_abs_diff": int(np.abs(x.astype(np.int64) - y.astype(np.int64)).max()) if x.size else 0}
        if name == "boxes":
            same_box = equal
        else:
            out["det_box_rows"] = (x, y)
    a, b = np.load(ref / "frames.npy", mmap_mode="r"), np.load(other / "frames.npy", mmap_mode="r")
    if a.shape != b.shape:
        out["frames"] = {"shape_ref": list(a.shape), "shape": list(b.shape)}
        return out
    if same_box is None or len(same_box) != len(a):
        same_box = np.ones(len(a), bool)
    maxd, same_max, total, same_total, same_n, differing, sq = 0, 0, 0.0, 0.0, 0, 0, 0.0
    for i in range(len(a)):
        d = np.abs(a[i].astype(np.int16) - b[i].astype(np.int16))
        peak = int(d.max()) if d.size else 0
        maxd = max(maxd, peak)
        total += float(d.sum())
        differing += int(np.count_nonzero(d))
        sq += float((d.astype(np.float64) ** 2).sum())
        if same_box[i]:
            same_max, same_total, same_n = max(same_max, peak), same_total + float(d.sum()), same_n + d.size
    n = a.size or 1
    mse = sq / n
    out["frames"] = {"count": int(len(a)), "max_abs_diff": maxd, "mean_abs_diff": total / n,
                     "differing_fraction": differing / n, "same_box_max_diff": same_max,
                     "same_box_mean_diff": same_total / same_n if same_n else 0.0,
                     "same_box_fraction": float(same_box.mean()) if len(same_box) else 0.0,
                     "psnr_db": None if mse == 0 else round(10 * math.log10(255.0**2 / mse), 2)}
    return out


# ---- the live lip-sync on the GPU -------------------------------------------------------------------------

LIVE_P95_MS = 350.0  # per-chunk latency (200 ms chunk fed -> its last frame out), 95th percentile, 1080p FP16
LIVE_LAG_S = 0.5  # a stream keeps up when its last frame comes at most this long after its audio ended


def judge_live(data: Mapping[str, Any], *, judged: bool = True) -> Verdict:
    """The 1080p stream at real time must give every frame at 25 fps with p95 latency <= LIVE_P95_MS (``judged``;
    the rehearsal only needs the flow to produce frames); the concurrent 720p streams are reported, not judged."""
    if data.get("error"):
        return failed(f"the live measurement {data['error']}")
    single = data.get("single")
    if not single:
        return not_run("no live stream was measured")
    concurrent = data.get("concurrent") or []
    work = single["frames"] + sum(c["frames"] * c["streams"] for c in concurrent)
    behind = next((c for c in concurrent if not c["held"]), None)
    stop = (f", {behind['streams']} fell behind" + (f" ({behind['error']})" if behind.get("error") else "")
            if behind else "")
    figures = (f"{single['size']}: {single['frames']} of {single['expected_frames']} frames, p95 latency "
               f"{single['p95_ms']} ms, last frame {single['lag_s']} s after the audio; {data.get('max_streams', 0)} "
               f"concurrent {concurrent[0]['size'] if concurrent else '?'} streams held{stop}"
               + (f" ({data['stopped']})" if data.get("stopped") else ""))
    if judged:
        problems = []
        if not single["held"]:
            why = f": {single['error']}" if single.get("error") else ""
            problems.append(f"did not sustain {data.get('fps', 25)} fps{why}")
        if single["p95_ms"] is None or single["p95_ms"] > LIVE_P95_MS:
            problems.append(f"p95 latency {single['p95_ms']} ms > {LIVE_P95_MS:g} ms")
        if problems:
            return failed("; ".join(problems) + f" ({figures})", work, **data)
    return passed(figures, work, **data)
