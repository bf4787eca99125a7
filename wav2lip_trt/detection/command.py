"""``wav2lip-trt detect``: settle a face input's boxes once (into the cache, and as a JSON boxes file)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click

from ..cli_errors import user_errors
from ..cli_options import DETECTION_OPTIONS, FRAME_OPTIONS, PROGRESS_OPTION, RUNNER_OPTIONS, with_options
from ..errors import InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DetectOptions:
    """The detection settings of ``infer`` (same names, same meaning), without generation."""

    face: Path
    s3fd_checkpoint: Path = Path("checkpoints/s3fd.pth")
    static: bool = False
    fps: float = 25.0
    resize_factor: int = 1
    crop: tuple[int, int, int, int] = (0, -1, 0, -1)
    rotate: bool = False
    face_det_batch_size: int = 16
    detect_every: int = 1
    detect_size: int | None = None
    device: str = "auto"
    backend: str = "torch"
    precision: str = "auto"
    engines_dir: Path = Path("engines")
    flavor: str = "auto"
    cache_dir: Path | None = None
    no_cache: bool = False
    boxes: Path | None = None  # always None here: the pass detects

    def validate(self) -> None:
        for label, path in (("--face", self.face), ("--s3fd-checkpoint", self.s3fd_checkpoint)):
            if not Path(path).exists():
                raise InputError(f"{label} file not found: {path}")
        if self.face_det_batch_size < 1 or self.resize_factor < 1 or self.detect_every < 1:
            raise InputError("--face_det_batch_size, --resize_factor and --detect-every must be at least 1")
        from .scaled import check_detect_size

        check_detect_size(self.detect_size)


@dataclass(frozen=True)
class DetectResult:
    boxes: list[tuple[int, int, int, int] | None]
    origin: str
    detected: int
    width: int
    height: int
    fps: float


def detect_face(options: DetectOptions, *, on_phase: Callable[[str], None] | None = None,
                on_start: Callable[[int | None], None] | None = None,
                on_frame: Callable[[int], None] | None = None) -> DetectResult:
    """Raw S3FD boxes of every frame of ``options.face``, through the detection cache.

    Progress as :func:`~wav2lip_trt.session.run_inference` reports it: ``on_phase`` (loading
    models, detecting faces), then ``on_start(frames)`` and ``on_frame(done)`` per S3FD batch.
    """
    phase = on_phase or (lambda label: None)
    from ..backends import RunnerRequest, create_runners, resolve_device
    from ..detect import FaceDetector, check_frame_size
    from ..execution import DeviceContext
    from ..frame_ops import frame_ops_for
    from ..stages import StageTimes
    from ..video import FaceSource, FrameTransform
    from .cache import DetectionCache
    from .stage import DetectionPass

    options.validate()
    source = FaceSource(options.face, fps=options.fps,
                        transform=FrameTransform(options.resize_factor, options.rotate, tuple(options.crop)))
    info = source.info
    check_frame_size(info.width, info.height, f"{options.face}: its frames are {info.width}x{info.height}")
    context = DeviceContext(resolve_device(options.device))
    request = RunnerRequest(checkpoint_path=None, s3fd_checkpoint=options.s3fd_checkpoint, device=context.device,
                            precision=options.precision, engines_dir=options.engines_dir, flavor=options.flavor,
                            stream=context.compute)
    phase("loading models")
    with create_runners(options.backend, request) as runners:
        assert runners.detector is not None
        phase("detecting faces")
        times = StageTimes()
        ops = frame_ops_for(context, None, source, batch=options.face_det_batch_size)  # type: ignore[arg-type]
        cache = None if options.no_cache else DetectionCache(options.cache_dir)
        limit = 1 if options.static or source.kind == "image" else None
        raw = DetectionPass(FaceDetector(runners.detector, times, ops), ops, options, source, times,
                            runner_label=f"{runners.backend}/{runners.precision}", cache=cache, memo={},
                            on_start=on_start, on_frame=on_frame).run(limit)
    return DetectResult(raw.boxes, raw.origin, raw.detected, info.width, info.height, info.fps)


@click.command("detect")
@click.option("--face", "--video", "--image", "face", required=True, type=click.Path(path_type=Path),
              help="Video, image or folder of frames with a face.")
@click.option("--s3fd-checkpoint", "--s3fd_checkpoint", "s3fd_checkpoint", type=click.Path(path_type=Path),
              default=Path("checkpoints/s3fd.pth"), show_default=True, help="S3FD face detector weights.")
@click.option("--static", is_flag=True, help="Only the first frame (as infer --static).")
@click.option("--fps", type=float, default=25.0, show_default=True, help="Frame rate of a frames folder.")
@with_options(*FRAME_OPTIONS)
@with_options(*DETECTION_OPTIONS)
@with_options(*RUNNER_OPTIONS)
@click.option("--json", "json_path", type=click.Path(path_type=Path),
              help="Write the per-frame boxes here (the format infer --boxes reads; '-' = stdout).")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
@PROGRESS_OPTION
@user_errors
def detect_command(json_path: Path | None, quiet: bool, progress: str, **kwargs: object) -> None:
    """Detect the face in every frame once: fills the cache that infer reads, and writes a boxes file."""
    from ..cli_errors import setup_logging
    from ..cli_json import check_json_path
    from ..files import atomic_write_text
    from .boxes_file import box_problem, boxes_text

    setup_logging(quiet, progress)
    options = DetectOptions(**kwargs)  # type: ignore[arg-type]
    options.validate()
    check_json_path(json_path, {"--face": options.face, "--s3fd-checkpoint": options.s3fd_checkpoint}, {})
    from ..progress import Progress

    with Progress("detecting faces", unit="frame", enabled=not quiet) as shown:
        result = detect_face(options, on_phase=shown.phase, on_start=shown.start, on_frame=shown.update)
    usable = [None if box is None or box_problem(box, result.width, result.height) else box for box in result.boxes]
    if json_path is not None:
        text = boxes_text(usable, source=options.face, width=result.width, height=result.height, fps=result.fps)
        click.echo(text, nl=False) if str(json_path) == "-" else atomic_write_text(json_path, text)
    found = sum(box is not None for box in usable)
    if not quiet:
        click.echo(f"{options.face}: {len(usable)} frames, a face in {found} ({result.origin}; S3FD ran on "
                   f"{result.detected})", err=True)
