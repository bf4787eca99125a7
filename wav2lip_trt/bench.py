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
"""

from __future__ import annotations

import json
import shlex
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import InputError, Wav2LipTrtError
from .files import work_dir
from .options import check_clip_inputs

MODES = ("reference", "torch", "onnxruntime", "tensorrt", "auto")
"""``reference`` = the original algorithm (torch FP32 on the CPU); the others are ``infer --backend``."""


class BenchRunError(Wav2LipTrtError):
    """A measured run failed; the message carries the run's own error line."""


# ---------------------------------------------------------------------------------------------
# Timing helpers


@dataclass(frozen=True)
class Spread:
    """A sample's median and range: what a noisy machine lets one honestly quote."""

    median: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, samples: Sequence[float]) -> "Spread":
        if not samples:
            raise ValueError("no samples")
        return cls(float(statistics.median(samples)), float(min(samples)), float(max(samples)), len(samples))

    @property
    def spread(self) -> float:
        """(max - min) / median."""
        return (self.max - self.min) / self.median if self.median else 0.0

    def scaled(self, factor: float) -> "Spread":
        return Spread(self.median * factor, self.min * factor, self.max * factor, self.n)

    def to_json(self, digits: int = 5) -> dict[str, float | int]:
        """Rounded to ``digits`` significant digits."""
        def r(x: float) -> float:
            return float(f"{x:.{digits}g}")

        return {"median": r(self.median), "min": r(self.min), "max": r(self.max), "n": self.n}


def time_callable(fn: Callable[[], object], *, repeats: int = 5, warmup: int = 1,
                  synchronize: Callable[[], None] | None = None) -> Spread:
    """Seconds per call of ``fn`` after ``warmup`` discarded calls; ``synchronize`` (e.g.
    ``torch.cuda.synchronize``) is called around each timed call so queued GPU work is counted."""
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        if synchronize is not None:
            synchronize()
        start = time.perf_counter()
        fn()
        if synchronize is not None:
            synchronize()
        samples.append(time.perf_counter() - start)
    return Spread.of(samples)


@dataclass(frozen=True)
class Case:
    """One timed operation: ``setup()`` builds the inputs once and returns the call to time."""

    name: str
    items: int  # frames, faces or boxes per call (for items per second)
    unit: str  # what an item is
    setup: Callable[[], Callable[[], object]]


def _face_frames(count: int, height: int, width: int, seed: int) -> list:
    from .samples import talking_face_frames

    return list(talking_face_frames(count, width, height, seed=seed))


def _centre_box(height: int, width: int) -> tuple[int, int, int, int]:
    """(y1, y2, x1, x2) of a face-sized box in the middle of the frame."""
    side = max(16, min(height, width) // 2)
    top, left = (height - side) // 2, (width - side) // 2
    return top, top + side, left, left + side


def synthetic_s3fd_outputs(batch: int, height: int, width: int, seed: int = 0) -> list:
    """Raw S3FD head outputs shaped like a real frame's: ~0.1 % of positions pass the 0.05 candidate
    score, plus one confident face per image at stride 16, so post-processing does real work."""
    import numpy as np
    import torch

    from .models.s3fd import head_map_sizes

    rng = np.random.default_rng(seed)
    outputs = []
    for level, (h, w) in enumerate(head_map_sizes(height, width)):
        cls = np.zeros((batch, 2, h, w), dtype=np.float32)
        cls[:, 1] = rng.normal(-6.0, 1.0, (batch, h, w))
        if level == 2 and h > 2 and w > 2:
            cy, cx = h // 2, w // 2
            cls[:, 1, cy - 1 : cy + 2, cx - 1 : cx + 2] = rng.uniform(2.0, 4.0, (batch, 3, 3))
        reg = rng.normal(0.0, 0.5, (batch, 4, h, w)).astype(np.float32)
        outputs += [torch.from_numpy(cls), torch.from_numpy(reg)]
    return outputs


def hot_stage_cases(*, height: int = 360, width: int = 640, detect_batch: int = 16, generate_batch: int = 128,
                    audio_seconds: float = 10.0, boxes: int = 250, seed: int = 0) -> list[Case]:
    """The pipeline's CPU stages between the networks, at the pipeline's batch sizes."""

    def mel() -> Callable[[], object]:
        from .audio import melspectrogram
        from .samples import speechlike_audio

        wav = speechlike_audio(audio_seconds, seed=seed)
        return lambda: melspectrogram(wav)

    def postprocess() -> Callable[[], object]:
        from .detect import choose_faces

        outputs = synthetic_s3fd_outputs(detect_batch, height, width, seed)
        return lambda: choose_faces(outputs)

    def crop() -> Callable[[], object]:
        import numpy as np

        from .faces import crop_faces, generator_inputs

        frames = _face_frames(generate_batch, height, width, seed)
        box = [_centre_box(height, width)] * generate_batch
        mels = np.random.default_rng(seed).uniform(-4, 4, (generate_batch, 80, 16)).astype(np.float32)
        return lambda: generator_inputs(crop_faces(frames, box), mels)

    def paste() -> Callable[[], object]:
        import numpy as np

        from .faces import paste_back, prediction_to_uint8

        frames = _face_frames(generate_batch, height, width, seed)
        box = _centre_box(height, width)
        pred = np.random.default_rng(seed).random((generate_batch, 3, 96, 96), dtype=np.float32)

        def run() -> None:
            for frame, face in zip(frames, prediction_to_uint8(pred)):
                paste_back(frame, face, box)

        return run

    def smoothing() -> Callable[[], object]:
        import numpy as np

        from .boxes import smooth_stream

        rng = np.random.default_rng(seed)
        y1, y2, x1, x2 = _centre_box(height, width)
        rows = np.array([x1, y1, x2, y2]) + rng.integers(-3, 4, (boxes, 4))
        return lambda: list(smooth_stream(enumerate(rows)))

    size = f"{width}x{height}"
    return [
        Case("mel", int(audio_seconds), "s audio", mel),
        Case(f"postprocess-b{detect_batch}-{size}", detect_batch, "frames", postprocess),
        Case(f"crop-b{generate_batch}-{size}", generate_batch, "faces", crop),
        Case(f"paste-b{generate_batch}-{size}", generate_batch, "faces", paste),
        Case(f"smoothing-{boxes}", boxes, "boxes", smoothing),
    ]


def model_cases(checkpoint_path: Path, s3fd_checkpoint: Path, *, backend: str = "torch", device: str = "cpu",
                precision: str = "auto", engines_dir: Path = Path("engines"), s3fd_batch: int = 4,
                s3fd_size: tuple[int, int] = (240, 320), wav2lip_batches: Sequence[int] = (32, 128),
                seed: int = 0) -> list[Case]:
    """Both networks through one backend's runners on seeded inputs (the parity command's inputs)."""

    def runners() -> Any:
        import torch

        from .backends import RunnerRequest, create_runners

        request = RunnerRequest(checkpoint_path=Path(checkpoint_path), s3fd_checkpoint=Path(s3fd_checkpoint),
                                device=torch.device(device), precision=precision, engines_dir=Path(engines_dir))
        return create_runners(backend, request)

    def timed_infer(model: str, feed_of: Callable[[], dict]) -> Callable[[], Callable[[], object]]:
        def setup() -> Callable[[], object]:
            made = runners()
            runner = made.detector if model == "s3fd" else made.generator
            feed = {k: v.to(runner.device) for k, v in feed_of().items()}
            if runner.device.type == "cuda":
                import torch

                def call() -> object:
                    out = runner.infer(feed)
                    torch.cuda.synchronize(runner.device)
                    return out

                return call
            return lambda: runner.infer(feed)

        return setup

    from .parity import s3fd_feed, wav2lip_feed

    h, w = s3fd_size
    cases = [Case(f"s3fd-b{s3fd_batch}-{w}x{h}", s3fd_batch, "frames",
                  timed_infer("s3fd", lambda: s3fd_feed(s3fd_batch, h, w, seed)))]
    for batch in wav2lip_batches:
        cases.append(Case(f"wav2lip-b{batch}", batch, "faces",
                          timed_infer("wav2lip", lambda batch=batch: wav2lip_feed(batch, seed))))
    return cases


def time_cases(cases: Sequence[Case], *, repeats: int = 5, warmup: int = 1) -> dict[str, dict[str, Any]]:
    """Each case timed with :func:`time_callable`: milliseconds per call and items per second."""
    results = {}
    for case in cases:
        seconds = time_callable(case.setup(), repeats=repeats, warmup=warmup)
        results[case.name] = {"ms": seconds.scaled(1e3).to_json(), "items": case.items, "unit": case.unit,
                              "items_per_second": round(case.items / seconds.median, 2)}
    return results


# ---------------------------------------------------------------------------------------------
# Whole runs


@dataclass(frozen=True)
class BenchOptions:
    """Everything ``bench`` takes, validated in one place."""

    checkpoint_path: Path  # Wav2Lip checkpoint
    s3fd_checkpoint: Path  # S3FD checkpoint
    face: Path | None = None  # clip to lip-sync; None = a generated talking-face clip
    audio: Path | None = None  # its audio (given together with face)
    seconds: float = 4.0  # generated clip: length ...
    size: tuple[int, int] = (240, 320)  # ... (height, width) ...
    fps: float = 25.0  # ... and frame rate
    modes: tuple[str, ...] = ("reference", "torch")
    device: str = "auto"  # for the pipeline modes; the reference always runs on the CPU
    precision: str = "auto"
    engines_dir: Path = Path("engines")
    flavor: str = "auto"
    repeats: int = 3  # measured runs per mode
    warmup: int = 1  # discarded runs per mode first (file caches, lazy kernel compiles)
    box: tuple[int, int, int, int] = (-1, -1, -1, -1)  # fixed face box y1 y2 x1 x2 instead of detection
    face_det_batch_size: int = 16
    wav2lip_batch_size: int = 128
    on_missing_face: str = "error"  # pipeline modes only: the reference always stops on a missing face
    micro: bool = False  # also time the hot stages and the networks in this process
    seed: int = 0
    work_dir: Path | None = None  # clip, outputs and run files; None = a temporary folder

    def validate(self) -> None:
        for label, path in (("--checkpoint_path", self.checkpoint_path), ("--s3fd-checkpoint", self.s3fd_checkpoint)):
            if label == "--s3fd-checkpoint" and self.box[0] != -1:
                continue
            if not Path(path).is_file():
                raise InputError(f"{label} file not found: {path}")
        check_clip_inputs(self.face, self.audio)
        if not self.modes:
            raise InputError("give at least one mode to measure")
        for mode in self.modes:
            if mode not in MODES:
                raise InputError(f"unknown mode {mode!r}; choose from: {', '.join(MODES)}")
        if len(set(self.modes)) != len(self.modes):
            raise InputError(f"a mode is named twice: {', '.join(self.modes)}")
        if self.repeats < 1:
            raise InputError(f"--repeats must be at least 1, got {self.repeats}")
        if self.warmup < 0:
            raise InputError(f"--warmup must be 0 or more, got {self.warmup}")
        if not self.seconds > 0 or not self.fps > 0:
            raise InputError(f"--seconds and --fps must be positive, got {self.seconds} and {self.fps}")
        if min(self.size) < 32:
            raise InputError(f"--size {self.size[0]}x{self.size[1]}: frames must be at least 32x32")
        from .backends import PRECISION_CHOICES
        from .options import DEVICES, ON_MISSING_FACE

        choices_of = (("--device", self.device, DEVICES), ("--precision", self.precision, PRECISION_CHOICES),
                      ("--on-missing-face", self.on_missing_face, ON_MISSING_FACE))
        for label, value, choices in choices_of:
            if value not in choices:
                raise InputError(f"{label} {value!r}: choose one of {', '.join(choices)}")

    def command(self) -> str:
        """The ``wav2lip-trt bench`` command line for these options (defaults left out)."""
        default = BenchOptions(self.checkpoint_path, self.s3fd_checkpoint)
        parts = ["wav2lip-trt", "bench", "--checkpoint_path", str(self.checkpoint_path)]
        if self.box[0] == -1:
            parts += ["--s3fd-checkpoint", str(self.s3fd_checkpoint)]
        for f in fields(self):
            if f.name in ("checkpoint_path", "s3fd_checkpoint") or getattr(self, f.name) == getattr(default, f.name):
                continue
            value = getattr(self, f.name)
            flag = "--" + f.name.replace("_", "-")
            if isinstance(value, bool):
                parts.append(flag)
            elif f.name == "size":
                parts += [flag, f"{value[0]}x{value[1]}"]
            elif f.name == "modes":
                parts += [flag, ",".join(value)]
            elif f.name == "box":
                parts += [flag, *map(str, value)]
            else:
                parts += [flag, str(value)]
        return shlex.join(parts)


@dataclass(frozen=True)
class Clip:
    face: Path
    audio: Path
    generated: bool
    width: int
    height: int
    fps: float
    frames: int  # output frames (= mel chunks)
    audio_seconds: float


@dataclass(frozen=True)
class Run:
    """One measured process."""

    mode: str
    seconds: float  # the lip-sync call itself: model loading, decode ... encode and mux
    process_seconds: float  # the whole process, interpreter start and imports included
    peak_rss_bytes: int  # the process's peak resident set
    frames: int
    backend: str
    precision: str
    device: str
    stages: list[dict[str, Any]] = field(default_factory=list)  # StageTimes.rows(); empty for the reference
    gpu_peak_bytes: int | None = None  # torch's peak reserved CUDA memory
    gpu_device_peak_bytes: int | None = None  # device-wide peak in use above the start (TensorRT's own included)


@dataclass(frozen=True)
class ModeResult:
    mode: str
    runs: tuple[Run, ...]
    audio_seconds: float

    @property
    def seconds(self) -> Spread:
        return Spread.of([r.seconds for r in self.runs])

    @property
    def frames_per_second(self) -> Spread:
        return Spread.of([r.frames / r.seconds for r in self.runs])

    @property
    def realtime_factor(self) -> Spread:
        """Seconds of audio lip-synced per second (above 1 = faster than real time)."""
        return Spread.of([self.audio_seconds / r.seconds for r in self.runs])

    @property
    def peak_rss_mib(self) -> Spread:
        return Spread.of([r.peak_rss_bytes / 2**20 for r in self.runs])

    @property
    def process_seconds(self) -> Spread:
        return Spread.of([r.process_seconds for r in self.runs])

    @property
    def gpu_peak_mib(self) -> Spread | None:
        """torch's peak reserved CUDA memory."""
        values = [r.gpu_peak_bytes for r in self.runs if r.gpu_peak_bytes is not None]
        return Spread.of([v / 2**20 for v in values]) if values else None

    @property
    def gpu_device_peak_mib(self) -> Spread | None:
        """The device's peak memory in use above the run's start, TensorRT's own allocations included."""
        values = [r.gpu_device_peak_bytes for r in self.runs if r.gpu_device_peak_bytes is not None]
        return Spread.of([v / 2**20 for v in values]) if values else None

    def stages(self) -> list[dict[str, Any]]:
        """Per stage: median busy seconds over the runs and the items per second that gives."""
        names: list[str] = []
        for run in self.runs:
            names += [row["stage"] for row in run.stages if row["stage"] not in names]
        rows = []
        for name in names:
            found = [row for run in self.runs for row in run.stages if row["stage"] == name]
            busy = Spread.of([float(row["seconds"]) for row in found])
            items = int(found[0]["items"])
            rows.append({"stage": name, "busy_seconds": busy.to_json(), "items": items,
                         "items_per_second": round(items / busy.median, 2) if busy.median > 0 and items else None})
        return rows


@dataclass(frozen=True)
class BenchReport:
    clip: Clip
    modes: tuple[ModeResult, ...]
    options: BenchOptions
    machine: dict[str, Any]
    seconds: float
    micro: dict[str, dict[str, Any]] = field(default_factory=dict)
    command: str = ""

    def mode(self, name: str) -> ModeResult | None:
        return next((m for m in self.modes if m.mode == name), None)

    def speedups(self) -> dict[str, dict[str, Any]]:
        """Each pipeline mode against the reference: the ratio of medians, and the spread of the ratios
        of runs made back to back (repeat i of the reference against repeat i of the mode)."""
        ref = self.mode("reference")
        if ref is None:
            return {}
        out = {}
        for m in self.modes:
            if m.mode == "reference":
                continue
            paired = Spread.of([a.seconds / b.seconds for a, b in zip(ref.runs, m.runs)])
            out[m.mode] = {"median_ratio": round(ref.seconds.median / m.seconds.median, 3),
                           "paired_ratio": paired.to_json()}
        return out

    def table(self) -> str:
        c = self.clip
        lines = [
            f"clip: {c.width}x{c.height} at {c.fps:g} fps, {c.frames} frames, {c.audio_seconds:.2f} s of audio"
            + (" (generated)" if c.generated else f" ({c.face})"),
            f"{self.options.repeats} measured runs per mode after {self.options.warmup} warm-up, each in a fresh "
            "process, modes interleaved; median [min-max]",
            "",
            f"{'mode':<12} {'backend':<22} {'seconds':>22} {'frames/s':>20} {'x real time':>20} {'peak RSS MiB':>22}"
            f" {'GPU MiB torch/device':>21}",
        ]
        for m in self.modes:
            run = m.runs[0]
            what = f"{run.backend} {run.precision} {run.device}"
            gpu, device = m.gpu_peak_mib, m.gpu_device_peak_mib
            gpu_text = "" if gpu is None else f"{gpu.median:.0f}/{'?' if device is None else f'{device.median:.0f}'}"
            lines.append(
                f"{m.mode:<12} {what:<22} {_spread(m.seconds, 2):>22} {_spread(m.frames_per_second, 2):>20} "
                f"{_spread(m.realtime_factor, 3):>20} {_spread(m.peak_rss_mib, 0):>22} {gpu_text:>21}"
            )
        for mode, ratio in self.speedups().items():
            paired = ratio["paired_ratio"]
            lines.append(f"{mode} over reference: speed-up {ratio['median_ratio']:.2f}x (ratio of medians; back-to-back "
                         f"pairs {paired['min']:.2f}-{paired['max']:.2f}x)")
        for m in self.modes:
            stages = m.stages()
            if not stages:
                continue
            lines += ["", f"{m.mode} stages (busy seconds, median of {len(m.runs)}; stages overlap in threads)",
                      f"  {'stage':<12} {'busy s':>9} {'items':>7} {'items/s':>10}"]
            for row in stages:
                rate = "" if row["items_per_second"] is None else f"{row['items_per_second']:.1f}"
                lines.append(f"  {row['stage']:<12} {row['busy_seconds']['median']:>9.3f} {row['items']:>7} {rate:>10}")
        if self.micro:
            lines += ["", "in-process timings (ms per call, median [min-max])"]
            for name, r in self.micro.items():
                ms = r["ms"]
                lines.append(f"  {name:<28} {ms['median']:>10.2f} [{ms['min']:.2f}-{ms['max']:.2f}]  "
                             f"{r['items_per_second']:>10.1f} {r['unit']}/s")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        opts = {f.name: _jsonable(getattr(self.options, f.name)) for f in fields(self.options)}
        return {
            "command": self.command,
            "machine": self.machine,
            "clip": {k: _jsonable(v) for k, v in asdict(self.clip).items()},
            "options": opts,
            "seconds": round(self.seconds, 1),
            "modes": {
                m.mode: {
                    "backend": m.runs[0].backend, "precision": m.runs[0].precision, "device": m.runs[0].device,
                    "seconds": m.seconds.to_json(), "frames_per_second": m.frames_per_second.to_json(),
                    "realtime_factor": m.realtime_factor.to_json(), "peak_rss_mib": m.peak_rss_mib.to_json(),
                    "process_seconds": m.process_seconds.to_json(),
                    "gpu_peak_mib": None if m.gpu_peak_mib is None else m.gpu_peak_mib.to_json(),
                    "gpu_device_peak_mib": None if m.gpu_device_peak_mib is None else m.gpu_device_peak_mib.to_json(),
                    "stages": m.stages(),
                    "runs": [{k: v for k, v in asdict(r).items() if k != "mode"} for r in m.runs],
                }
                for m in self.modes
            },
            "speedup_over_reference": self.speedups(),
            "micro": self.micro,
        }


def _spread(s: Spread, digits: int) -> str:
    return f"{s.median:.{digits}f} [{s.min:.{digits}f}-{s.max:.{digits}f}]"


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def run_bench(options: BenchOptions, *, log: Callable[[str], None] | None = None) -> BenchReport:
    """Measure every mode on one clip: warm-up runs, then ``repeats`` rounds with the modes taking turns."""
    from .measure import machine_record

    options.validate()
    say = log or (lambda _: None)
    started = time.perf_counter()
    with work_dir(options.work_dir, "wav2lip-trt-bench-") as work:
        clip = _clip(options, work)
        say(f"clip: {clip.width}x{clip.height}, {clip.frames} frames, {clip.audio_seconds:.2f} s of audio")
        runs: dict[str, list[Run]] = {m: [] for m in options.modes}
        total = options.warmup + options.repeats
        for round_index in range(total):
            warm = round_index < options.warmup
            # Rotate who goes first, so no mode always runs right after the same other one.
            shift = round_index % len(options.modes)
            order = options.modes[shift:] + options.modes[:shift]
            for mode in order:
                label = "warm-up" if warm else f"run {round_index - options.warmup + 1}/{options.repeats}"
                run = _measure(mode, options, clip, work, round_index)
                say(f"{mode} {label}: {run.seconds:.2f} s, peak RSS {run.peak_rss_bytes / 2**20:.0f} MiB")
                if not warm:
                    runs[mode].append(run)
        modes = tuple(ModeResult(m, tuple(runs[m]), clip.audio_seconds) for m in options.modes)
        micro = {}
        if options.micro:
            say("timing the hot stages and the networks in this process")
            cases = hot_stage_cases(height=clip.height, width=clip.width, detect_batch=options.face_det_batch_size,
                                    generate_batch=options.wav2lip_batch_size, seed=options.seed)
            from .backends import resolve_device

            cases += model_cases(options.checkpoint_path, options.s3fd_checkpoint, seed=options.seed,
                                 device=str(resolve_device(options.device)), s3fd_size=(clip.height, clip.width))
            micro = time_cases(cases, repeats=options.repeats, warmup=max(1, options.warmup))
    machine = machine_record()
    return BenchReport(clip, modes, options, machine, time.perf_counter() - started, micro, options.command())


def _clip(options: BenchOptions, work: Path) -> Clip:
    from .audio import MelChunks, load_audio, melspectrogram
    from .video import FaceSource

    generated = options.face is None
    if generated:
        from .samples import write_talking_clip

        height, width = options.size
        face, audio = write_talking_clip(work / "clip", seconds=options.seconds, fps=options.fps, width=width,
                                         height=height, seed=options.seed)
    else:
        face, audio = Path(options.face), Path(options.audio)  # type: ignore[arg-type]
    info = FaceSource(face, fps=options.fps).info
    wav = load_audio(audio)
    frames = len(MelChunks(melspectrogram(wav), info.fps))
    return Clip(face, audio, generated, info.width, info.height, info.fps, frames, len(wav) / 16000)


def _inference_options(options: BenchOptions, clip: Clip, mode: str, outfile: Path) -> dict[str, Any]:
    """The InferenceOptions fields of one run, as JSON."""
    return {
        "checkpoint_path": str(options.checkpoint_path), "s3fd_checkpoint": str(options.s3fd_checkpoint),
        "face": str(clip.face), "audio": str(clip.audio), "outfile": str(outfile), "fps": options.fps,
        "box": list(options.box), "face_det_batch_size": options.face_det_batch_size,
        "wav2lip_batch_size": options.wav2lip_batch_size,
        "on_missing_face": "error" if mode == "reference" else options.on_missing_face,
        "backend": "torch" if mode == "reference" else mode,
        "device": "cpu" if mode == "reference" else options.device,
        "precision": "fp32" if mode == "reference" else options.precision,
        "engines_dir": str(options.engines_dir), "flavor": options.flavor,
    }


def _measure(mode: str, options: BenchOptions, clip: Clip, work: Path, index: int) -> Run:
    from .measure import run_measured

    spec_path = work / f"run-{mode}-{index}.json"
    result_path = work / f"run-{mode}-{index}.result.json"
    outfile = work / f"out-{mode}-{index}.mp4"
    spec = {"mode": mode, "options": _inference_options(options, clip, mode, outfile), "result": str(result_path)}
    spec_path.write_text(json.dumps(spec))
    measured = run_measured([sys.executable, "-m", "wav2lip_trt.bench", "--child", str(spec_path)])
    if measured.returncode != 0 or not result_path.exists():
        lines = [line for line in measured.stderr.strip().splitlines() if line.strip()]
        last = lines[-1] if lines else "no error output"
        raise BenchRunError(f"the {mode} run failed (exit code {measured.returncode}): {last}")
    result = json.loads(result_path.read_text())
    outfile.unlink(missing_ok=True)
    return Run(mode=mode, seconds=result["seconds"], process_seconds=measured.seconds,
               peak_rss_bytes=measured.peak_rss_bytes, frames=result["frames"], backend=result["backend"],
               precision=result["precision"], device=result["device"], stages=result["stages"],
               gpu_peak_bytes=result.get("gpu_peak_bytes"), gpu_device_peak_bytes=result.get("gpu_device_peak_bytes"))


# ---------------------------------------------------------------------------------------------
# The measured process


class _DeviceMemoryPeak:
    """Samples the GPU's memory in use from a thread; torch's own counters miss TensorRT's allocations."""

    def __init__(self, interval: float = 0.01) -> None:
        import torch

        self._torch = torch
        self.interval = interval
        self.start = self.peak = self._used()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wav2lip-trt-gpu-memory", daemon=True)

    def _used(self) -> int:
        free, total = self._torch.cuda.mem_get_info()
        return int(total - free)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._used())

    def __enter__(self) -> "_DeviceMemoryPeak":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._used())


def _options_from_json(data: dict[str, Any]) -> Any:
    from .options import InferenceOptions

    paths = {"checkpoint_path", "s3fd_checkpoint", "face", "audio", "outfile", "engines_dir"}
    kwargs = {k: Path(v) if k in paths else tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return InferenceOptions(**kwargs)


def _child(spec_path: Path) -> None:
    """One measured run: lip-sync once, write what the parent cannot see from outside."""
    import torch

    spec = json.loads(spec_path.read_text())
    options = _options_from_json(spec["options"])
    cuda = spec["mode"] != "reference" and torch.cuda.is_available() and options.device != "cpu"
    sampler = _DeviceMemoryPeak() if cuda else None
    result: dict[str, Any]
    with sampler if sampler is not None else _nothing():
        start = time.perf_counter()
        if spec["mode"] == "reference":
            from .reference import run_reference

            outputs = run_reference(options, write_video=True)
            seconds = time.perf_counter() - start
            result = {"frames": len(outputs.frames), "backend": "reference", "precision": "fp32", "device": "cpu",
                      "stages": []}
        else:
            from .session import run_inference

            run = run_inference(options)
            seconds = time.perf_counter() - start
            result = {"frames": run.frames, "backend": run.backend, "precision": run.precision, "device": run.device,
                      "stages": run.stages}
    result["seconds"] = seconds
    if cuda:
        result["gpu_peak_bytes"] = int(torch.cuda.max_memory_reserved())
        result["gpu_device_peak_bytes"] = sampler.peak - sampler.start  # type: ignore[union-attr]
    Path(spec["result"]).write_text(json.dumps(result))


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _child_main(argv: Sequence[str]) -> int:
    if len(argv) != 2 or argv[0] != "--child":
        print("usage: python -m wav2lip_trt.bench --child SPEC.json (used by wav2lip-trt bench)", file=sys.stderr)
        return 2
    try:
        _child(Path(argv[1]))
    except Wav2LipTrtError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
