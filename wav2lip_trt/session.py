"""A session: the networks loaded once (runners, engines, CUDA graphs), then any number of lip-syncs.

Every way of running inference goes through here: ``infer`` (one job), a batch worker and a Ray
actor (many jobs on one session). A job is prepared first (options checked, face input opened,
audio decoded), which needs no model, so a bad input fails before the slow start; then the
session executes it.

    with Session("checkpoints/wav2lip.pth", "checkpoints/s3fd.pth") as session:
        session.infer("speaker.mp4", "english.wav", "out/english.mp4")
        session.infer("speaker.mp4", "german.wav", "out/german.mp4", pads=(0, 20, 0, 0))
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch

from .audio import MelChunks, load_audio, melspectrogram
from .backends import RunnerRequest, Runners, create_runners, resolve_device
from .detect import FaceDetector
from .dump import IntermediateDump
from .encode import VideoWriter
from .encoders import choose_encoder
from .errors import AudioError, InputError
from .execution import BatchPlan, DeviceContext, WriterThread, plan_batches
from .execution.gpu_timing import EventClock, SteadyRate, memory_report
from .execution.handoff import on_stream
from .execution.memory import bound_allocator
from .faces import IMG_SIZE
from .ffmpeg import find_ffmpeg
from .detection.cache import DetectionCache
from .detection.stage import DetectionPass, Memo, RawDetections
from .detection.engine_fit import fit_to_engine
from .frame_ops import FrameOps, frame_ops_for
from .options import InferenceOptions
from .pipeline import Detection, face_items, generate
from .progress import LIP_SYNC_PHASE
from .runners.base import Runner
from .measure import Usage
from .stages import StageTimes
from .video import FaceSource

if TYPE_CHECKING:
    from .live.avatar import Avatar
    from .live.stream import LiveStream
    from .scoring.networks import ScoringNetworks
    from .scoring.online import OnlineScorer

log = logging.getLogger(__name__)

MODEL_OPTIONS = ("checkpoint_path", "s3fd_checkpoint", "device", "backend", "precision", "engines_dir", "flavor")
"""The :class:`InferenceOptions` fields that decide which models a session loads; every other field
may change from one call to the next."""

Phase = Callable[[str], None]


@dataclass(frozen=True)
class InferenceResult:
    outfile: Path
    frames: int
    fps: float
    width: int
    height: int
    audio_seconds: float
    device: str
    backend: str
    precision: str
    seconds: float
    stages: list[dict] = field(default_factory=list)  # per-stage busy time (StageTimes.rows())
    detection: str = "fixed box"  # where the face boxes came from: "cache hit", "cache miss", "boxes file", ...
    scores: dict | None = None  # --score: {"expert": ..., "visual_quality": ...} (wav2lip_trt.scoring.online)
    resources: dict = field(default_factory=dict)  # CPU time, page faults, peak RSS, threads (measure.Usage.since)
    rate: dict = field(default_factory=dict)  # written batches: frames, batches, first_batch_s, steady_fps (SteadyRate)

    def report(self) -> dict[str, Any]:
        """The run as ``infer --json`` reports it (also serve's job report)."""
        return {
            "outfile": str(self.outfile), "frames": self.frames, "fps": self.fps, "width": self.width,
            "height": self.height, "audio_seconds": self.audio_seconds,
            "video_seconds": round(self.frames / self.fps, 3), "device": self.device, "backend": self.backend,
            "precision": self.precision, "detection": self.detection, "seconds": round(self.seconds, 3),
            "frames_per_second": round(self.frames / self.seconds, 3),
            "realtime_factor": round(self.audio_seconds / self.seconds, 3),
            "steady_frames_per_second": self.rate.get("steady_fps"), "first_batch_seconds": self.rate.get("first_batch_s"),
            "written_batches": self.rate.get("batches"), "stages": self.stages,
            "threads": self.resources.get("threads"), "resources": self.resources, **(self.scores or {}),
        }


@dataclass
class Job:
    """One lip-sync, prepared without any model: checked options, the opened face, the mel chunks."""

    options: InferenceOptions
    source: FaceSource
    chunks: MelChunks
    mel: np.ndarray
    audio_seconds: float
    plan: BatchPlan
    times: StageTimes
    started: float


def prepare_job(options: InferenceOptions, phase: Phase | None = None) -> Job:
    """Everything about a job that can fail on bad input, before the slow work starts."""
    started = time.perf_counter()
    times = StageTimes()
    options.validate()
    source = options.check_face_source()
    if source.kind == "image" and not source.transform.is_identity:
        log.warning("--resize_factor/--rotate/--crop are ignored for a still image (as in the original)")
    info = source.info
    options = fit_to_engine(options, info.width, info.height)  # frames S3FD's TensorRT engine takes, before it loads
    if phase is not None:
        phase("reading audio")
    with times.stage("audio"):
        try:
            wav = load_audio(options.audio, ffmpeg=options.ffmpeg)
            audio_seconds = len(wav) / 16000
            mel = melspectrogram(wav)
            del wav  # 230 MB per hour of audio; only the mel (a third of that) is needed from here on
            chunks = MelChunks(mel, info.fps)
        except AudioError as exc:
            msg = str(exc)
            raise AudioError(msg if str(options.audio) in msg else f"{options.audio}: {msg}") from None
    times.add("audio", 0.0, len(chunks))
    log.info("%s: %s %dx%d at %.3f fps; %d output frames for %.2f s of audio",
             info.path, info.kind, info.width, info.height, info.fps, len(chunks), audio_seconds)
    plan = plan_batches(info.width, info.height, budget_mb=options.frame_memory,
                        wav2lip_batch_size=options.wav2lip_batch_size, face_det_batch_size=options.face_det_batch_size)
    log.info("frame memory %g MiB: %s", options.frame_memory, plan.describe())
    return Job(options, source, chunks, mel, audio_seconds, plan, times, started)


class Session:
    """Runners (and on a GPU the compute stream and the generator's CUDA graph) shared by every call.

    ``s3fd_checkpoint=None`` loads no face detector: every call must then give ``box``.
    ``generator_batch`` fixes the batch the generator's CUDA graph is captured at (default: the
    first call's ``wav2lip_batch_size``, 128, whatever its frame size; a live stream's too); a call
    whose frames allow only smaller device batches runs them padded to it, and so do a live stream's
    small batches.

    One session may serve several threads at once (an offline run and live streams): the generator
    is :class:`SharedGenerator`, one call at a time, and :meth:`warm_up` comes before any other use.
    """

    def __init__(self, checkpoint_path: str | Path, s3fd_checkpoint: str | Path | None = None, *, device: str = "auto",
                 backend: str = "torch", precision: str = "auto", engines_dir: str | Path = Path("engines"),
                 flavor: str = "auto", generator_batch: int | None = None) -> None:
        self.model_options = {
            "checkpoint_path": Path(checkpoint_path), "s3fd_checkpoint": None if s3fd_checkpoint is None else Path(s3fd_checkpoint),
            "device": device, "backend": backend, "precision": precision, "engines_dir": Path(engines_dir), "flavor": flavor,
        }
        for label, path in (("--checkpoint_path", checkpoint_path), ("--s3fd-checkpoint", s3fd_checkpoint)):
            if path is not None and not Path(path).exists():
                raise InputError(f"{label} file not found: {path}")
        bound_allocator()
        self.device = resolve_device(device)
        self.context = DeviceContext(self.device)
        started = time.perf_counter()
        request = RunnerRequest(
            checkpoint_path=Path(checkpoint_path), s3fd_checkpoint=self.model_options["s3fd_checkpoint"], device=self.device,
            precision=precision, engines_dir=Path(engines_dir), flavor=flavor, stream=self.context.compute,
            generator_batch=generator_batch,
        )
        self.runners: Runners = create_runners(backend, request)
        assert self.runners.generator is not None
        self._generator_lock = threading.Lock()
        self.generator: Runner = SharedGenerator(self.runners.generator, self._generator_lock)  # type: ignore[assignment]
        self.load_seconds = time.perf_counter() - started
        self.generator_batch = generator_batch
        self._load_reported = False
        self._warm = False
        self.detections: Memo = {}  # raw boxes by detection key: one face, many audios, one detection
        self._scoring: dict[tuple[Path | None, Path | None], ScoringNetworks] = {}  # --score networks by checkpoints
        log.info("running %s %s on %s", self.runners.backend, self.runners.precision, self.generator.device)

    @classmethod
    def for_options(cls, options: InferenceOptions, *, generator_batch: int | None = None) -> "Session":
        """The session ``options`` needs (no detector when it gives a fixed ``box``)."""
        return cls(options.checkpoint_path, options.s3fd_checkpoint if options.needs_detector else None,
                   device=options.device, backend=options.backend, precision=options.precision,
                   engines_dir=options.engines_dir, flavor=options.flavor, generator_batch=generator_batch)

    def options(self, face: str | Path, audio: str | Path, outfile: str | Path = Path("results/result_voice.mp4"),
                **per_call: Any) -> InferenceOptions:
        """:class:`InferenceOptions` for a call on this session; model options are the session's."""
        model = set(per_call) & set(MODEL_OPTIONS)
        if model:
            raise InputError(f"{', '.join(sorted(model))}: chosen when the session is created, not per call")
        known = {f.name for f in fields(InferenceOptions)}
        unknown = set(per_call) - known
        if unknown:
            raise InputError(f"unknown option(s): {', '.join(sorted(unknown))}")
        base = {k: v for k, v in self.model_options.items() if v is not None}
        base.setdefault("s3fd_checkpoint", Path("checkpoints/s3fd.pth"))
        for name in ("pads", "crop", "box"):
            if name in per_call:
                per_call[name] = tuple(per_call[name])
        return InferenceOptions(face=Path(face), audio=Path(audio), outfile=Path(outfile), **base, **per_call)

    def infer(self, face: str | Path, audio: str | Path, outfile: str | Path = Path("results/result_voice.mp4"), *,
              on_start: Callable[[int], None] | None = None, on_frame: Callable[[int], None] | None = None,
              on_phase: Phase | None = None, **per_call: Any) -> InferenceResult:
        """Lip-sync ``face`` to ``audio`` into ``outfile`` with this session's models."""
        return self.run(self.options(face, audio, outfile, **per_call), on_start=on_start, on_frame=on_frame,
                        on_phase=on_phase)

    def run(self, options: InferenceOptions, *, on_start: Callable[[int], None] | None = None,
            on_frame: Callable[[int], None] | None = None, on_phase: Phase | None = None) -> InferenceResult:
        return self.execute(prepare_job(self._check(options), on_phase), on_start=on_start, on_frame=on_frame,
                            on_phase=on_phase)

    def _check(self, options: InferenceOptions) -> InferenceOptions:
        for name in MODEL_OPTIONS:
            mine, theirs = self.model_options[name], getattr(options, name)
            if name == "s3fd_checkpoint" and (mine is None or not options.needs_detector):
                continue
            same = Path(theirs).resolve() == mine.resolve() if isinstance(mine, Path) else mine == theirs
            if not same:
                raise InputError(f"this session was loaded with {name}={mine}, the call asks for {theirs}")
        if options.needs_detector and self.runners.detector is None:
            raise InputError("this session has no face detector (it was created without an S3FD checkpoint): give a fixed box")
        return options

    def execute(self, job: Job, *, on_start: Callable[[int], None] | None = None,
                on_frame: Callable[[int], None] | None = None, on_phase: Phase | None = None) -> InferenceResult:
        """Detect, lip-sync and encode a prepared job."""
        options, source, chunks, plan, times = job.options, job.source, job.chunks, job.plan, job.times
        self._check(options)
        usage = Usage.now()  # models loaded: what follows is this job's
        times.clock = EventClock(self.context.compute if self.context.is_cuda else None)  # GPU time of the GPU stages
        rate = SteadyRate()
        rate.started = job.started  # start-up (audio, load, warm-up, detection, first batch) apart from the steady rate

        def written(seconds: float, frames: int) -> None:
            times.add("encode", seconds, frames)
            rate.batch(frames)

        phase = on_phase if on_phase is not None else (lambda label: None)
        info, total = source.info, len(job.chunks)
        if not self._load_reported:
            times.add("load", self.load_seconds)
            self._load_reported = True
        generator_batch = (self.context.device_batch(plan.frame_bytes, options.wav2lip_batch_size) if self.context.is_cuda
                           else plan.generator_batch)  # on a GPU the frames being generated live on the device
        if not self._warm:  # the graph's batch: the user's (128), never a job's frame size; smaller batches are padded
            with times.stage("load"):
                self.warm_up(options.wav2lip_batch_size)
        dump = IntermediateDump(options.dump_intermediates) if options.dump_intermediates else None
        if options.save_frames is not None:
            Path(options.save_frames).mkdir(parents=True, exist_ok=True)
        ops: FrameOps | None = None
        frames_out: WriterThread | None = None
        try:
            if dump is not None:
                dump.save("mel", job.mel.astype(np.float32))
            ops = frame_ops_for(self.context, chunks, source, blend=options.blend, decoder=options.decoder,
                                batch=plan.decode_ahead, batch_frames=plan.largest_batch,
                                yuv=options.save_frames is None and dump is None)  # BGR only where the host needs it
            scorer = None
            if options.score:  # before detection: a wrong scoring checkpoint fails before the slow work
                with times.stage("load"):
                    scorer = self._scorer(options)
            detection, origin = None, "fixed box"
            if not options.uses_fixed_box:
                phase("detecting faces" if options.needs_detector else "reading boxes")
                raw = self._raw_boxes(options, source, ops, times, plan, dump, 1 if options.static or source.kind == "image" else total,
                                      on_start=on_start, on_frame=on_frame)
                detection, origin = Detection(raw.boxes, options, source), raw.origin
            items = face_items(source, total, options, detection, ops, times, plan.decode_ahead)
            batches = generate(items, ops, self.generator, generator_batch, dump, times, chunks,
                               reference_batch=options.wav2lip_batch_size, total=total, scorer=scorer, on_frame=on_frame)
            ffmpeg = find_ffmpeg(options.ffmpeg)
            phase(LIP_SYNC_PHASE)
            if on_start is not None:
                on_start(total)
            with contextlib.closing(items), contextlib.closing(batches), VideoWriter(
                options.outfile, width=info.width, height=info.height, fps=info.fps, audio=options.audio,
                ffmpeg=ffmpeg, crf=options.crf, encoder=choose_encoder(options.encoder, ffmpeg),
                preset=options.preset, pixel_format=ops.pixel_format,
            ) as writer, WriterThread(
                writer, depth=plan.writer_batches, extra=_frame_saver(options.save_frames),
                busy=written,
            ) as frames_out:
                for batch in batches:
                    frames_out.put(batch)
        finally:
            if dump is not None:
                dump.close()
            _close_ops(ops, frames_out)
        return InferenceResult(
            outfile=Path(options.outfile), frames=total, fps=info.fps, width=info.width, height=info.height,
            audio_seconds=job.audio_seconds, device=str(self.generator.device), backend=self.runners.backend,
            precision=self.runners.precision, seconds=time.perf_counter() - job.started, stages=times.rows(),
            detection=origin, scores=None if scorer is None else scorer.report(total_frames=total),
            resources=_resources(Usage.now().since(usage, total), self.context), rate=rate.report(),
        )

    def _scorer(self, options: InferenceOptions) -> "OnlineScorer":
        """A fresh scorer over this session's scoring networks (loaded once per checkpoint pair).

        The networks run where the generator runs — its backend, precision, device and compute
        stream — so on a GPU the generated faces are scored without leaving the device.
        """
        from .scoring.networks import load_scoring_networks
        from .scoring.online import OnlineScorer

        key = (options.expert_checkpoint, options.disc_checkpoint)
        if key not in self._scoring:
            request = RunnerRequest(checkpoint_path=None, s3fd_checkpoint=None, device=self.generator.device,
                                    precision=self.runners.precision, engines_dir=self.model_options["engines_dir"],
                                    flavor=self.model_options["flavor"], stream=self.runners.stream)
            self._scoring[key] = load_scoring_networks(self.runners.backend, request, expert=options.expert_checkpoint,
                                                       disc=options.disc_checkpoint)
        networks = self._scoring[key]
        return OnlineScorer(networks.expert, networks.disc, device=networks.device, stream=networks.stream,
                            every=options.score_every)

    def _raw_boxes(self, options: InferenceOptions, source: FaceSource, ops: FrameOps, times: StageTimes, plan: BatchPlan,
                   dump: IntermediateDump | None, limit: int, *, on_start: Callable[[int | None], None] | None = None,
                   on_frame: Callable[[int], None] | None = None) -> RawDetections:
        """Raw boxes from a --boxes file, this session's memo, the disk cache, or S3FD (in that order)."""
        detector = FaceDetector(self.runners.detector, times, ops) if self.runners.detector is not None else None
        cache = None if options.no_cache or not options.needs_detector else DetectionCache(options.cache_dir)
        label = f"{self.runners.backend}/{self.runners.precision}"
        return DetectionPass(detector, ops, options, source, times, runner_label=label, cache=cache,
                             memo=self.detections if options.needs_detector else None,
                             decode_ahead=plan.decode_ahead, on_start=on_start, on_frame=on_frame).run(limit, dump)

    def avatar(self, face: str | Path, out: str | Path | None = None, *, loop: str = "forward",
               **per_call: Any) -> "Avatar":
        """Prepare ``face`` for live use (boxes, face crops; :mod:`wav2lip_trt.live.avatar`), saved to ``out`` if given.

        ``per_call`` takes ``infer``'s face options (pads, box, boxes, nosmooth, detect_every, ...).
        """
        from .live.avatar import make_avatar

        self.warm_up(per_call.get("wav2lip_batch_size", 128))  # before this session's first detection (see warm_up)
        target = Path(out) / "stream.mp4" if out is not None else Path("results/result_voice.mp4")  # checked, never written
        return make_avatar(self, self.options(face, face, target, **per_call), None if out is None else Path(out), loop=loop)

    def stream(self, avatar: "Avatar | str | Path", **options: Any) -> "LiveStream":
        """A live stream of ``avatar`` (or an avatar folder): ``feed``/``close`` audio, iterate frames
        (:class:`wav2lip_trt.live.stream.LiveStream` for the clocks, queues and batches).
        ``expert_checkpoint``/``disc_checkpoint`` (and ``score_every``) score the faces as ``infer --score``
        does; ``live.scorer.report(total_frames=live.total)`` after the end."""
        from .live.avatar import Avatar, load_avatar
        from .live.stream import LiveStream, ScoreOptions

        expert, disc = (options.pop(name, None) for name in ("expert_checkpoint", "disc_checkpoint"))
        score = ScoreOptions(None if expert is None else Path(expert), None if disc is None else Path(disc),
                             options.pop("score_every", 1))
        self.warm_up(options.get("reference_batch", 128))  # before the scorers' weights go to the compute stream
        if score.expert_checkpoint is not None or score.disc_checkpoint is not None:
            options["scorer"] = self._scorer(score)  # type: ignore[arg-type]
        return LiveStream(self, avatar if isinstance(avatar, Avatar) else load_avatar(avatar), **options)

    def warm_up(self, batch: int = 128) -> None:
        """Run the generator once, at the session's fixed batch (``generator_batch``, else ``batch``), before
        any other use of the session's compute stream.

        On a GPU that captures the generator's CUDA graph at that batch (smaller batches are padded to
        it, a live stream's included), not at whatever batch happens to come first: a live stream's
        first batch is one or two frames, and a graph captured there would leave every larger batch
        eager. Every way in calls it first (``execute``, ``avatar``, a live stream), under the
        generator's lock, so no other thread of this session launches work on the compute stream
        while the capture records it. On the CPU it does nothing.
        """
        if self._warm:
            return
        with self._generator_lock:
            if not self._warm:
                _warm_up(self.runners.generator, self.generator_batch or batch, self.context)
                self._warm = True

    def close(self) -> None:
        for networks in self._scoring.values():
            networks.close()
        self._scoring.clear()
        self.runners.__exit__(None, None, None)

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def run_inference(
    options: InferenceOptions, *, on_frame: Callable[[int], None] | None = None, on_start: Callable[[int], None] | None = None,
    on_phase: Phase | None = None,
) -> InferenceResult:
    """Lip-sync ``options.face`` to ``options.audio`` and write ``options.outfile`` (a one-job session).

    ``on_phase(label)`` says what the run is doing (reading audio, loading models, detecting
    faces, lip-syncing); within a step that counts frames, ``on_start(total)`` gives the count and
    ``on_frame(done)`` the frames done so far: detecting faces counts input frames (after each S3FD
    batch; ``total`` is the container's estimate), lip-syncing counts output frames whose faces are
    generated (after each generator call: on the CPU a chunk of 8 faces, so the bar moves within a
    batch; the writer follows a batch behind).
    """
    job = prepare_job(options, on_phase)
    if on_phase is not None:
        on_phase("loading models")
    with job.times.stage("load"):
        session = Session.for_options(options)  # the generator's graph: at this job's batch (execute's warm-up)
    session._load_reported = True  # its load time is already in this job's "load" row
    with session:
        return session.execute(job, on_start=on_start, on_frame=on_frame, on_phase=on_phase)


def _resources(usage: dict[str, Any], context: DeviceContext) -> dict[str, Any]:
    """The run's CPU usage; on a GPU also peak device memory and pinned host bytes (peak RSS is in ``usage``)."""
    if not context.is_cuda:
        return usage
    memory = memory_report(context.device)
    del memory["peak_rss_bytes"]
    return {**usage, **memory}


class SharedGenerator:
    """The session's generator runner, safe to call from several threads at once (an offline run, live streams).

    Calls run one at a time under the session's lock, and on a GPU each call's outputs are copied on
    the runner's stream before the lock is let go: a CUDA graph (and a TensorRT context) writes every
    call's outputs into the same buffers, so without the copy another thread's call, enqueued before
    this thread's paste-back, would overwrite this thread's faces. All of it is enqueued on the one
    compute stream, in lock order, which is the order it runs in; nothing waits on the host.
    """

    def __init__(self, runner: Runner, lock: threading.Lock) -> None:
        self.runner, self._lock = runner, lock

    def infer(self, feed: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with self._lock:
            out = self.runner.infer(feed)
            if self.runner.stream is None:
                return out
            with torch.cuda.device(self.runner.device), on_stream(self.runner.stream):
                return {name: tensor.clone() for name, tensor in out.items()}

    def __getattr__(self, name: str) -> Any:  # the runner's name, device, stream, dtypes, graph batch
        if name == "runner":  # not set yet (a copy being built): no recursion
            raise AttributeError(name)
        return getattr(self.runner, name)


def _close_ops(ops: FrameOps | None, writer: WriterThread | None) -> None:
    """Unpin what a run's frame ops hold (the device path's readback ring) once the writer thread, which
    reads from it, has ended; an error's exit from the writer's block waits for it only briefly."""
    close = getattr(ops, "close", None)
    if close is None:
        return
    if writer is not None and not writer.join(timeout=60.0):
        log.warning("the writer thread has not ended; its readback ring stays pinned until it is collected")
        return
    close()


def _warm_up(runner: Runner, batch: int, context: DeviceContext) -> None:
    """On a GPU, one generator batch before any worker thread starts.

    The torch runner captures its CUDA graph on its first batch; capturing here, while this thread
    is the only one using the GPU, means no other thread can enqueue work into the capture (the
    decoder's copy stream may even be the same pooled stream in a long-lived process). It also
    moves cuDNN's algorithm search and TensorRT's lazy set-up out of the first real batch.
    """
    if not context.is_cuda:
        return
    with context.on_compute():
        mel = torch.zeros((batch, 1, 80, 16), device=context.device)
        face = torch.zeros((batch, 6, IMG_SIZE, IMG_SIZE), device=context.device)
    runner.infer({"mel": mel, "face": face})


def _frame_saver(folder: Path | None) -> Callable[[int, np.ndarray], None] | None:
    if folder is None:
        return None

    def save(index: int, frame: np.ndarray) -> None:
        path = Path(folder) / f"frame_{index:06d}.png"
        if not cv2.imwrite(str(path), frame):
            raise InputError(f"--save-frames {folder}: cannot write {path.name}")

    return save


