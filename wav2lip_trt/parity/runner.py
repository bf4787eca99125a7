"""``parity``'s runner: the ladder itself. Loads or generates the clip, runs the reference and every
rung (exporting ONNX files and building engines as needed), and compares each with the reference."""

from __future__ import annotations

import importlib.util
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import MissingDependencyError, Wav2LipTrtError
from ..files import work_dir
from .detection import DetectionCheck, check_detection, check_setting_fits
from .feeds import s3fd_feed, wav2lip_feed
from .metrics import compare_boxes, compare_tensors
from .options import REFERENCE, RUNGS, Box, ParityOptions, Rung, Tolerances
from .report import Check, ParityReport, RungResult
from .scoring import clip_feeds, random_feeds, run_tower, scoring_batch, scoring_graphs, scoring_runners

if TYPE_CHECKING:
    import torch

    from ..backends import Runners


@dataclass
class _Outputs:
    """What one rung produced for one check: named arrays and per-frame chosen boxes."""

    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    boxes: dict[str, list[Box | None]] = field(default_factory=dict)


@dataclass
class _Clip:
    face: Path
    audio: Path
    generated: bool
    frames: np.ndarray  # (N, H, W, 3) uint8 BGR: the first clip_frames frames
    mel: np.ndarray  # (80, T) float32
    fps: float


@dataclass
class _Feeds:
    """The inputs every rung sees; the clip's Wav2Lip faces are cut at the reference's boxes."""

    s3fd: dict[str, dict[str, "torch.Tensor"]]  # input kind -> feed
    wav2lip: dict[str, dict[str, "torch.Tensor"]]
    clip: _Clip | None
    scoring: dict[str, tuple[str, dict[str, "torch.Tensor"]]] = field(default_factory=dict)  # check -> (graph, feed)


def run_parity(options: ParityOptions, *, log: Callable[[str], None] | None = None) -> ParityReport:
    """Run the ladder and compare every rung with the torch FP32 reference.

    The reference itself failing (a bad checkpoint, an unreadable clip) is the user's error and
    raises; every other rung's error is reported against that rung.
    """
    from ..measure import machine_record

    options.validate()
    say = log or (lambda _: None)
    started = time.perf_counter()
    wanted = [r for r in RUNGS if r is REFERENCE or not options.rungs or r.name in options.rungs]
    with work_dir(options.work_dir, "wav2lip-trt-parity-") as work:
        needs_clip = options.inputs != "random" or options.end_to_end or options.checks_detection
        clip = _load_clip(options, work) if needs_clip else None
        if clip is not None and options.checks_detection:
            check_setting_fits(options, clip.frames.shape[2], clip.frames.shape[1])
        feeds = _feeds(options, clip)
        say(f"{REFERENCE.name}: running the reference")
        ref_start = time.perf_counter()
        try:
            reference = _collect(REFERENCE, options, work, feeds)
        except _StageError as exc:  # the reference failing is the user's problem (or a bug), not a rung's result
            raise exc.exc
        results = [RungResult(REFERENCE, "reference", checks=(), seconds=time.perf_counter() - ref_start, device="cpu")]
        for rung in wanted[1:]:
            requested = rung.name in options.rungs
            why_not = _unavailable(rung, options.flavor)
            if why_not is not None:
                status = "failed" if requested else "skipped"
                reason = f"requested, but it cannot run here: {why_not}" if requested else why_not
                say(f"{rung.name}: {status} ({why_not})")
                results.append(RungResult(rung, status, reason))
                continue
            say(f"{rung.name}: running")
            results.append(_run_rung(rung, options, work, feeds, reference))
        detection: DetectionCheck | None = None
        if clip is not None and options.checks_detection:
            say("detection: the pipeline with full detection, then with the setting (torch fp32, cache off)")
            detection = check_detection(options, clip.face, clip.audio, work)
    inputs = _describe_inputs(options, clip)
    machine = machine_record()
    return ParityReport(tuple(results), dict(options.tolerances), inputs, machine, time.perf_counter() - started,
                        detection)


def _unavailable(rung: Rung, flavor: str) -> str | None:
    """Why this rung cannot run on this machine, or None."""
    import torch

    if rung.backend == "onnxruntime":
        for module, extra in (("onnx", "onnx"), ("onnxruntime", "onnx")):
            if importlib.util.find_spec(module) is None:
                return f"{module} is not installed (pip install 'wav2lip-trt[{extra}]')"
        return None
    if rung.device == "cuda" and not torch.cuda.is_available():
        what = "TensorRT engines run" if rung.backend == "tensorrt" else "torch FP16 runs"
        return f"{what} on an NVIDIA GPU, and torch sees none"
    if rung.backend == "tensorrt":
        from ..build_engines import load_tensorrt

        try:
            load_tensorrt(flavor)
        except MissingDependencyError as exc:
            return str(exc)
    return None


def _run_rung(rung: Rung, options: ParityOptions, work: Path, feeds: _Feeds,
              reference: dict[str, _Outputs]) -> RungResult:
    start = time.perf_counter()
    try:
        outputs = _collect(rung, options, work, feeds)
    except Exception as exc:  # any failure to export, build or run is this rung's result, not a crash
        stage = exc.stage if isinstance(exc, _StageError) else "running"
        loading = "build" if rung.backend == "tensorrt" else rung.breaks  # an engine that will not load
        broke = {"export": "export", "build": "build", "loading": loading}
        return RungResult(rung, "failed", f"{stage} failed: {_one_line(exc)}", (), time.perf_counter() - start,
                          broke=broke.get(stage, rung.breaks))
    tol = options.tolerances[rung.precision]
    checks = tuple(_compare(name, reference[name], outputs[name], tol) for name in reference)
    failures = [line for c in checks for line in c.failures()]
    status = "failed" if failures else "passed"
    reason = "; ".join(failures[:3]) + (f"; and {len(failures) - 3} more" if len(failures) > 3 else "")
    return RungResult(rung, status, reason, checks, time.perf_counter() - start, rung.device,
                      broke=rung.breaks if failures else None)


class _StageError(Exception):
    """Tags an exception with the step (export, build, load, run) it happened in."""

    def __init__(self, stage: str, exc: BaseException) -> None:
        super().__init__(str(exc))
        self.stage, self.exc = stage, exc


def _one_line(exc: BaseException) -> str:
    inner = exc.exc if isinstance(exc, _StageError) else exc
    text = " ".join(str(inner).split()) or type(inner).__name__
    if not isinstance(inner, Wav2LipTrtError):
        text = f"{type(inner).__name__}: {text}"
    return text if len(text) <= 300 else text[:297] + "..."


@contextmanager
def _step(stage: str) -> Iterator[None]:
    try:
        yield
    except _StageError:
        raise
    except Exception as exc:
        raise _StageError(stage, exc) from exc


@contextmanager
def _create_runners(rung: Rung, options: ParityOptions, work: Path, feeds: _Feeds) -> Iterator["Runners"]:
    """The detector and generator for a rung; ONNX files and engines come from one folder, so the
    ONNX Runtime rung and the TensorRT rungs run the very same exported graph."""
    import torch

    from ..backends import RunnerRequest, Runners, create_runners

    if rung.backend == "torch":
        request = RunnerRequest(checkpoint_path=Path(options.checkpoint_path),
                                s3fd_checkpoint=Path(options.s3fd_checkpoint), device=torch.device(rung.device),
                                precision=rung.precision)
        with _step("loading"):
            runners = create_runners("torch", request)
        with runners:
            yield runners
        return
    artifacts = work / "artifacts"
    if rung.backend == "onnxruntime":
        from ..build_engines import BuildOptions, artifact_paths, build_engines
        from ..runners.onnxruntime_runner import OnnxRuntimeRunner

        with _step("export"):
            build_engines(BuildOptions(checkpoint_path=Path(options.checkpoint_path),
                                       s3fd_checkpoint=Path(options.s3fd_checkpoint), out=artifacts,
                                       precision=rung.precision, onnx_only=True, **_scoring_checkpoints(options)),
                          show_progress=False)
        with _step("loading"):
            runners = Runners(
                OnnxRuntimeRunner(artifact_paths(artifacts, "s3fd", rung.precision).onnx, name=rung.name),
                OnnxRuntimeRunner(artifact_paths(artifacts, "wav2lip", rung.precision).onnx, name=rung.name),
                rung.backend, rung.precision,
            )
        with runners:
            yield runners
        return
    from ..build_engines import artifact_paths
    from ..runners.tensorrt_runner import TensorRTRunner

    engines = options.engines_dir
    if engines is None:
        engines = artifacts
        with _step("build"):
            _build_engines(rung.precision, options, artifacts, feeds)
    with _step("loading"):
        detector = TensorRTRunner(artifact_paths(engines, "s3fd", rung.precision).engine,
                                  checkpoint_path=options.s3fd_checkpoint, flavor=options.flavor, name=rung.name)
        generator = TensorRTRunner(artifact_paths(engines, "wav2lip", rung.precision).engine,
                                   checkpoint_path=options.checkpoint_path, flavor=options.flavor, name=rung.name)
    with Runners(detector, generator, rung.backend, rung.precision) as runners:
        yield runners


def _build_engines(precision: str, options: ParityOptions, out: Path, feeds: _Feeds) -> None:
    """Engines whose profiles cover every input this run feeds them."""
    from ..build_engines import BuildOptions, build_engines

    sizes = [tuple(f["image"].shape[2:]) for f in feeds.s3fd.values()]
    if feeds.clip is not None:
        sizes.append(tuple(feeds.clip.frames.shape[1:3]))
    batches = [f["image"].shape[0] for f in feeds.s3fd.values()] + [16]
    low = (min(h for h, _ in sizes), min(w for _, w in sizes))
    high = (max(h for h, _ in sizes), max(w for _, w in sizes))
    w2l = max([options.wav2lip_batch, 128] + [f["mel"].shape[0] for f in feeds.wav2lip.values()])
    scoring = scoring_batch(feeds.scoring)
    build_engines(BuildOptions(
        checkpoint_path=Path(options.checkpoint_path), s3fd_checkpoint=Path(options.s3fd_checkpoint), out=out,
        precision=precision, flavor=options.flavor, s3fd_batch=(1, max(batches), max(batches)),
        s3fd_min_size=low, s3fd_opt_size=high, s3fd_max_size=high, wav2lip_batch=(1, w2l, w2l),
        scoring_batch=(1, scoring, scoring), **_scoring_checkpoints(options),
    ), show_progress=False)


def _scoring_checkpoints(options: ParityOptions) -> dict[str, Path | None]:
    return {"expert_checkpoint": options.expert_checkpoint, "disc_checkpoint": options.disc_checkpoint,
            "syncnet_checkpoint": options.syncnet_checkpoint}


def _load_clip(options: ParityOptions, work: Path) -> _Clip:
    from ..audio import load_audio, melspectrogram
    from ..video import FaceSource

    generated = options.face is None
    if generated:
        from ..samples import write_talking_clip

        height, width = options.clip_size
        face, audio = write_talking_clip(work / "clip", seconds=options.clip_seconds, width=width, height=height,
                                         seed=options.seed)
    else:
        face, audio = Path(options.face), Path(options.audio)  # type: ignore[arg-type]
    source = FaceSource(face)
    frames = np.stack(list(source.frames(options.clip_frames)))
    return _Clip(face, audio, generated, frames, melspectrogram(load_audio(audio)), source.info.fps)


def _feeds(options: ParityOptions, clip: _Clip | None) -> _Feeds:
    from ..detect import preprocess

    s3fd: dict[str, dict[str, torch.Tensor]] = {}
    wav2lip: dict[str, dict[str, torch.Tensor]] = {}
    if options.inputs in ("random", "both"):
        s3fd["random"] = s3fd_feed(options.s3fd_batch, *options.s3fd_size, seed=options.seed)
        wav2lip["random"] = wav2lip_feed(options.wav2lip_batch, seed=options.seed)
    if options.inputs in ("clip", "both") and clip is not None:
        s3fd["clip"] = {"image": preprocess(clip.frames)}
    scoring = random_feeds(scoring_graphs(options), options.seed) if options.inputs in ("random", "both") else {}
    return _Feeds(s3fd, wav2lip, clip, scoring)


def _clip_faces(clip: _Clip, boxes: Sequence[Box | None]) -> dict[str, "torch.Tensor"]:
    """Wav2Lip inputs cut from the clip's frames at the reference's boxes (padded like the pipeline;
    the central square where no face was found) with the clip's own mel chunks."""
    from ..audio import MelChunks
    from ..boxes import pad_box
    from ..faces import crop_faces, generator_inputs
    from ..options import InferenceOptions

    pads = next(f.default for f in fields(InferenceOptions) if f.name == "pads")  # infer's default --pads
    height, width = clip.frames.shape[1:3]
    crops = []
    for box in boxes:
        row = None if box is None else pad_box(box, pads, height, width)
        if row is None or row[2] <= row[0] or row[3] <= row[1]:
            side = min(height, width)
            top, left = (height - side) // 2, (width - side) // 2
            crops.append((top, top + side, left, left + side))
        else:
            x1, y1, x2, y2 = (int(v) for v in row)
            crops.append((y1, y2, x1, x2))
    faces = crop_faces(list(clip.frames), crops)
    chunks = MelChunks(clip.mel, clip.fps)
    mel, face = generator_inputs(faces, chunks.gather([i % len(chunks) for i in range(len(faces))]))
    return {"mel": mel, "face": face}


def _collect(rung: Rung, options: ParityOptions, work: Path, feeds: _Feeds) -> dict[str, _Outputs]:
    """Every check's outputs from one rung, in a fixed order; the reference also cuts the clip's faces."""
    from ..detect import choose_faces
    from ..runners.base import S3FD_OUTPUTS

    out: dict[str, _Outputs] = {}
    with _create_runners(rung, options, work, feeds) as runners:
        for kind, feed in feeds.s3fd.items():
            with _step("running S3FD"):
                raw = runners.detector.infer(feed)  # type: ignore[union-attr]
                tensors = {n: raw[n].detach().to("cpu").float().numpy().copy() for n in S3FD_OUTPUTS}
            faces = choose_faces([_as_tensor(tensors[n]) for n in S3FD_OUTPUTS])
            out[f"s3fd/{kind}"] = _Outputs(tensors, {"chosen face": faces})
            if kind == "clip" and rung is REFERENCE:
                feeds.wav2lip["clip"] = _clip_faces(feeds.clip, faces)  # type: ignore[arg-type]
        for kind, feed in feeds.wav2lip.items():
            with _step("running Wav2Lip"):
                pred = runners.generator.infer(feed)["pred"].detach().to("cpu").float().numpy().copy()
            out[f"wav2lip/{kind}"] = _Outputs({"pred": pred})
            if kind == "clip" and rung is REFERENCE:  # the scorers see what the reference generated
                feeds.scoring.update(clip_feeds(scoring_graphs(options), pred, feed["mel"]))
    graphs = scoring_graphs(options)
    if graphs:
        with _step("loading"), scoring_runners(rung, graphs, work / "artifacts", options.engines_dir,
                                               options.flavor) as towers:
            for name, (graph, feed) in feeds.scoring.items():
                with _step(f"running {graph}"):
                    out[name] = _Outputs(run_tower(towers[graph], graph, feed))
    if options.end_to_end and feeds.clip is not None:
        with _step("running the pipeline"):
            out["end-to-end"] = _run_pipeline(rung, options, feeds.clip, work)
    return out


def _as_tensor(array: np.ndarray) -> "torch.Tensor":
    import torch

    return torch.from_numpy(array)


def _run_pipeline(rung: Rung, options: ParityOptions, clip: _Clip, work: Path) -> _Outputs:
    """The public pipeline on the clip with this rung's backend, its intermediates dumped; a frame
    without a face passes through, so a rung that misses a face is compared, not stopped."""
    from ..options import InferenceOptions
    from ..session import run_inference

    run_dir = work / "end-to-end" / rung.name
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    engines = options.engines_dir if options.engines_dir is not None else work / "artifacts"
    run_inference(InferenceOptions(
        checkpoint_path=Path(options.checkpoint_path), s3fd_checkpoint=Path(options.s3fd_checkpoint), face=clip.face,
        audio=clip.audio, outfile=run_dir / "out.mp4", on_missing_face="skip", backend=rung.backend,
        device=rung.device, precision=rung.precision, engines_dir=Path(engines), flavor=options.flavor,
        dump_intermediates=run_dir / "dump",
    ))
    arrays = {name: np.load(run_dir / "dump" / f"{name}.npy") for name in ("det_boxes", "boxes", "pred", "frames")}
    det = [None if row[0] < 0 else (int(row[0]), int(row[1]), int(row[2]), int(row[3])) for row in arrays["det_boxes"]]
    final = [None if row[0] < 0 else (int(row[2]), int(row[0]), int(row[3]), int(row[1])) for row in arrays["boxes"]]
    return _Outputs({"pred": arrays["pred"], "frames": arrays["frames"]}, {"detected face": det, "final box": final})


def _compare(name: str, ref: _Outputs, out: _Outputs, tol: Tolerances) -> Check:
    boxes = tuple(
        compare_boxes(key, ref.boxes[key], out.boxes[key], min_iou=tol.min_iou, max_face_changes=tol.max_face_changes)
        for key in ref.boxes
    )
    if name != "end-to-end":
        tensors = tuple(
            compare_tensors(key, ref.tensors[key], out.tensors[key], atol=tol.atol, rtol=tol.rtol,
                            peak=1.0 if key == "pred" else None)
            for key in ref.tensors
        )
        return Check(name, tensors, boxes)
    # A frame whose final box moved shows another crop: its pixels would only measure the move,
    # which the box comparison already reports.
    ref_boxes, out_boxes = ref.boxes["final box"], out.boxes["final box"]
    same = np.array([a == b for a, b in zip(ref_boxes, out_boxes)], dtype=bool)
    faced = same & np.array([b is not None for b in ref_boxes], dtype=bool)
    tensors = (
        compare_tensors("pred", ref.tensors["pred"][faced], out.tensors["pred"][faced], atol=tol.atol, rtol=tol.rtol,
                        peak=1.0),
        compare_tensors("frames", ref.tensors["frames"][same], out.tensors["frames"][same], atol=tol.frame_atol,
                        rtol=0.0, peak=255.0),
    )
    note = (f"{int(same.sum())} of {len(same)} frames compared pixel by pixel (same final box), "
            f"{int(faced.sum())} of them with a face")
    return Check(name, tensors, boxes, note)


def _describe_inputs(options: ParityOptions, clip: _Clip | None) -> dict[str, Any]:
    info: dict[str, Any] = {
        "kind": options.inputs, "seed": options.seed, "end_to_end": options.end_to_end,
        "checkpoints": {"wav2lip": str(options.checkpoint_path), "s3fd": str(options.s3fd_checkpoint),
                        **{k.replace("_checkpoint", ""): str(v) for k, v in _scoring_checkpoints(options).items()
                           if v is not None}},
    }
    if options.inputs in ("random", "both"):
        h, w = options.s3fd_size
        info["s3fd_random"] = f"{options.s3fd_batch}x3x{h}x{w} (random BGR frames, pre-processed)"
        info["wav2lip_random"] = f"{options.wav2lip_batch} faces 96x96, mel 80x16 uniform in [-4, 4]"
    if clip is not None:
        h, w = clip.frames.shape[1:3]
        info["clip"] = {"face": str(clip.face) if not clip.generated else "generated talking-face clip",
                        "audio": str(clip.audio) if not clip.generated else "generated speech-like audio",
                        "size": f"{w}x{h}", "fps": clip.fps, "model_check_frames": len(clip.frames)}
        if clip.generated:
            info["clip"]["seconds"] = options.clip_seconds
    return info
