"""Inference options, validated in one place before any work starts."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import AudioError, InputError, OutfileError
from .files import check_output_dir, check_output_file

if TYPE_CHECKING:
    from .video import FaceSource

ON_MISSING_FACE = ("error", "skip", "previous")
DEVICES = ("auto", "cpu", "cuda")
BACKEND_CHOICES = ("auto", "torch", "onnxruntime", "tensorrt")
PRECISION_CHOICES = ("auto", "fp32", "fp16")


@dataclass(frozen=True)
class InferenceOptions:
    """Every option of the original ``inference.py`` (same defaults) plus this tool's own."""

    checkpoint_path: Path  # Wav2Lip generator checkpoint (wav2lip.pth or wav2lip_gan.pth)
    face: Path  # video, still image, or folder of frames
    audio: Path  # anything ffmpeg decodes: wav, mp3, m4a, a video's audio track
    outfile: Path = Path("results/result_voice.mp4")
    s3fd_checkpoint: Path = Path("checkpoints/s3fd.pth")
    static: bool = False  # use only the first frame (forced for a still image)
    fps: float = 25.0  # frame rate for images and frame folders; videos use their own
    pads: tuple[int, int, int, int] = (0, 10, 0, 0)  # top, bottom, left, right grow the detected box
    face_det_batch_size: int = 16
    wav2lip_batch_size: int = 128
    resize_factor: int = 1  # videos/folders: shrink frames by this integer factor first
    crop: tuple[int, int, int, int] = (0, -1, 0, -1)  # top, bottom, left, right; -1 = full size
    box: tuple[int, int, int, int] = (-1, -1, -1, -1)  # fixed face box y1, y2, x1, x2; -1 = detect
    rotate: bool = False  # videos/folders: rotate 90 degrees clockwise
    nosmooth: bool = False  # no temporal smoothing of detected boxes
    device: str = "auto"  # auto = cuda if available, else cpu
    backend: str = "torch"  # torch | onnxruntime | tensorrt | auto (engines if usable, else torch)
    precision: str = "auto"  # auto = fp16 on CUDA/engines, fp32 on CPU; or fp32 | fp16
    engines_dir: Path = Path("engines")  # where build-engines put the engines (tensorrt backend)
    flavor: str = "auto"  # TensorRT flavour: auto | tensorrt | tensorrt-rtx
    on_missing_face: str = "error"  # error | skip (frame passes unchanged) | previous (reuse last box)
    dump_intermediates: Path | None = None  # write mel/boxes/pred/frames .npy files here
    save_frames: Path | None = None  # also write the output frames as PNG files here
    ffmpeg: str | None = None  # ffmpeg executable; default imageio-ffmpeg's
    crf: int = 18  # libx264 quality (lower = better, larger)
    preset: str = "medium"  # libx264 preset: speed against size at the same quality (ultrafast .. placebo)
    decoder: str = "auto"  # GPU path only: auto | opencv (pinned-ring uploads) | dali (NVDEC); CPU uses OpenCV
    encoder: str = "auto"  # auto = h264_nvenc when the GPU and ffmpeg can, else libx264
    blend: str = "none"  # paste-back: none (the original's hard box) | feather (soft edges, no seam)
    frame_memory: float = 256.0  # MiB of frames in flight (generator batch, encoder queue, decode look-ahead)
    boxes: Path | None = None  # per-frame raw boxes (JSON from `detect --json`) instead of S3FD
    detect_every: int = 1  # S3FD on every K-th frame (and the last); boxes in between interpolated
    detect_size: int | None = None  # S3FD on frames whose longer side is scaled down to N px
    cache_dir: Path | None = None  # detection cache folder; None = $XDG_CACHE_HOME/wav2lip-trt or ~/.cache/...
    no_cache: bool = False  # neither read nor write the detection cache
    score: bool = False  # score the generated faces with the lip-sync expert / quality discriminator
    expert_checkpoint: Path | None = None  # lipsync_expert.pth (SyncNet_color) for --score
    disc_checkpoint: Path | None = None  # the visual quality discriminator for --score
    score_every: int = 1  # --score: the windows and faces starting at every K-th frame (1 = all of them)

    @property
    def uses_fixed_box(self) -> bool:
        return self.box[0] != -1

    @property
    def needs_detector(self) -> bool:
        """S3FD runs unless a fixed --box or a --boxes file says where the face is."""
        return not self.uses_fixed_box and self.boxes is None

    def paths(self) -> tuple[dict[str, Path | None], dict[str, Path | None]]:
        """(inputs, outputs) of this run by option name: what :func:`wav2lip_trt.files.check_separate` keeps apart."""
        inputs = {"--face": self.face, "--audio": self.audio, "--checkpoint_path": self.checkpoint_path,
                  "--s3fd-checkpoint": self.s3fd_checkpoint if self.needs_detector else None, "--boxes": self.boxes,
                  "--expert-checkpoint": self.expert_checkpoint, "--disc-checkpoint": self.disc_checkpoint}
        outputs = {"--outfile": self.outfile, "--save-frames": self.save_frames,
                   "--dump-intermediates": self.dump_intermediates}
        return inputs, outputs

    def validate(self) -> None:
        """Raise :class:`InputError` for anything that would fail later, before slow work starts."""
        for label, path in (("--checkpoint_path", self.checkpoint_path), ("--face", self.face), ("--audio", self.audio)):
            if not Path(path).exists():
                error = AudioError if label == "--audio" else InputError  # the audio's own problem (many_audios)
                raise error(f"{label} file not found: {path}")
        if self.boxes is not None:
            if self.uses_fixed_box:
                raise InputError("give either --box (one box for every frame) or --boxes FILE (a box per frame), not both")
            if not Path(self.boxes).is_file():
                raise InputError(f"--boxes file not found: {self.boxes}")
            if self.detect_every != 1 or self.detect_size is not None:
                raise InputError("--detect-every/--detect-size apply to S3FD; --boxes gives every frame's box already")
        if not isinstance(self.detect_every, int) or self.detect_every < 1:
            raise InputError(f"--detect-every must be a whole number of frames, at least 1, got {self.detect_every}")
        if self.detect_size is not None:
            from .detection.scaled import check_detect_size

            check_detect_size(self.detect_size)
        if self.score and self.expert_checkpoint is None and self.disc_checkpoint is None:
            raise InputError("--score needs --expert-checkpoint lipsync_expert.pth (and optionally --disc-checkpoint)")
        if isinstance(self.score_every, bool) or not isinstance(self.score_every, int) or self.score_every < 1:
            raise InputError(f"--score-every must be a whole number of frames, at least 1, got {self.score_every}")
        if self.score_every != 1 and not self.score:
            raise InputError("--score-every applies to --score")
        for label, path in (("--expert-checkpoint", self.expert_checkpoint), ("--disc-checkpoint", self.disc_checkpoint)):
            if path is not None and not Path(path).exists():
                raise InputError(f"{label} file not found: {path}")
        if self.needs_detector and not Path(self.s3fd_checkpoint).exists():
            raise InputError(
                f"S3FD checkpoint not found: {self.s3fd_checkpoint} (download s3fd.pth as described in "
                "checkpoints/README.md, pass --s3fd-checkpoint, or give a fixed --box)"
            )
        from .encode import check_container  # here, not at the top: the CLI imports this module to start

        inputs, outputs = self.paths()
        try:
            check_output_file(self.outfile, "--outfile", inputs)
        except InputError as exc:  # this output's own problem (many_audios)
            raise OutfileError(str(exc)) from None
        check_container(self.outfile, "--outfile")
        for label, folder in (("--save-frames", self.save_frames), ("--dump-intermediates", self.dump_intermediates)):
            if folder is not None:
                check_output_dir(folder, label, inputs, {k: v for k, v in outputs.items() if k != label})
        from .video import check_fps

        check_fps(self.fps)
        positive = {
            "--face_det_batch_size": self.face_det_batch_size,
            "--wav2lip_batch_size": self.wav2lip_batch_size,
            "--resize_factor": self.resize_factor,
        }
        for label, value in positive.items():
            if not value > 0:
                raise InputError(f"{label} must be positive, got {value}")
        if self.uses_fixed_box:
            y1, y2, x1, x2 = self.box
            if min(self.box) < 0 or y2 <= y1 or x2 <= x1:
                raise InputError(f"--box {list(self.box)} must be y1 y2 x1 x2 with 0 <= y1 < y2 and 0 <= x1 < x2")
        if self.on_missing_face not in ON_MISSING_FACE:
            raise InputError(f"--on-missing-face must be one of {', '.join(ON_MISSING_FACE)}")
        if self.backend not in BACKEND_CHOICES:
            raise InputError(f"--backend must be one of {', '.join(BACKEND_CHOICES)}")
        if self.precision not in PRECISION_CHOICES:
            raise InputError(f"--precision must be one of {', '.join(PRECISION_CHOICES)}")
        if self.device not in DEVICES:
            raise InputError(f"--device must be one of {', '.join(DEVICES)}")
        if self.decoder not in ("auto", "opencv", "dali"):
            raise InputError("--decoder must be auto, opencv or dali")
        if self.blend not in ("none", "feather"):
            raise InputError("--blend must be none or feather")
        if not (math.isfinite(self.frame_memory) and self.frame_memory > 0):
            raise InputError(f"--frame-memory must be a positive number of MiB, got {self.frame_memory}")
        if not 0 <= self.crf <= 51:
            raise InputError(f"--crf must be in 0..51, got {self.crf}")
        from .encode import X264_PRESETS

        if self.preset not in X264_PRESETS:
            raise InputError(f"--preset {self.preset!r} is not a libx264 preset; choose one of {', '.join(X264_PRESETS)}")

    def check_face_source(self) -> "FaceSource":
        """The checks that need the face input opened (its first frame decoded), before any model loads.

        S3FD cannot run on a frame under 32 pixels on a side (after --resize_factor/--rotate/--crop),
        a fixed --box must lie inside the frame, and a --boxes file must fit the frames and their count.
        Returns the opened source, for the job to use.
        """
        from .detect import check_frame_size
        from .video import FaceSource, FrameTransform

        transform = FrameTransform(self.resize_factor, self.rotate, tuple(self.crop))
        source = FaceSource(self.face, fps=self.fps, transform=transform)
        info = source.info
        if self.uses_fixed_box:
            y1, y2, x1, x2 = self.box
            if y2 > info.height or x2 > info.width:
                raise InputError(f"--box {list(self.box)} reaches outside the {info.width}x{info.height} frames of "
                                 f"{self.face}")
        elif self.needs_detector:
            resized = "" if source.transform.is_identity else " after --resize_factor/--rotate/--crop"
            check_frame_size(info.width, info.height, f"{self.face}: its frames are {info.width}x{info.height}{resized}")
        else:
            from .detection.boxes_file import read_boxes_for

            read_boxes_for(Path(self.boxes), source, static=self.static or source.kind == "image")
        return source


def check_model_choices(checkpoint_path: Path, device: str, backend: str, precision: str) -> None:
    """The model options a long-lived command (batch, serve) checks once before it starts any worker."""
    if not Path(checkpoint_path).is_file():
        raise InputError(f"--checkpoint_path file not found: {checkpoint_path}")
    for label, value, choices in (("--device", device, DEVICES), ("--backend", backend, BACKEND_CHOICES),
                                  ("--precision", precision, PRECISION_CHOICES)):
        if value not in choices:
            raise InputError(f"{label} must be one of {', '.join(choices)}, got {value}")


def check_clip_inputs(face: Path | None, audio: Path | None) -> None:
    """For commands that generate a clip unless given one: both files or neither, and they exist."""
    if (face is None) != (audio is None):
        raise InputError("give --face and --audio together (or neither, for a generated clip)")
    for label, path in (("--face", face), ("--audio", audio)):
        if path is not None and not Path(path).exists():
            raise InputError(f"{label} file not found: {path}")
