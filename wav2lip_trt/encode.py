"""Output: raw frames piped to one ffmpeg process that encodes H.264 and muxes the audio.

The reference writes a lossy MPEG-4 AVI into a fixed ``temp/`` folder and re-encodes it with a
second ffmpeg call; here a single pass encodes the exact frames. The result is written to a
hidden temporary file beside the output and renamed only when ffmpeg succeeded, so a failed or
interrupted run never leaves a truncated video, and parallel runs never share a temp path.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import numpy as np

from .errors import FFmpegError, InputError
from .ffmpeg import find_ffmpeg
from .files import publish, temporary_sibling

# Output containers that hold H.264 video with AAC audio, tried one by one with imageio-ffmpeg's ffmpeg
# (.webm, .gif, .wav, .mpg, .ogv, .mxf, .dv, .h264 refuse the pair; .divx, .qt are no known muxer).
# The value says whether it is an MP4/QuickTime-family muxer, which takes -movflags +faststart.
CONTAINERS: dict[str, bool] = {
    ".mp4": True, ".m4v": True, ".mov": True, ".3gp": True, ".3g2": True,
    ".mkv": False, ".avi": False, ".ts": False, ".m2ts": False, ".mts": False, ".flv": False,
}
FASTSTART_SUFFIXES = frozenset(suffix for suffix, faststart in CONTAINERS.items() if faststart)

X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow", "placebo")
"""libx264's presets, fastest first (``--preset``). At 1080p on one thread of a 2-core x86 host: ultrafast
86-114 fps, veryfast 28-46, faster 25, medium 15 (see benchmarks/README.md, encoder)."""
SWS_FLAGS = "accurate_rnd+full_chroma_int"
"""swscale's default BGR->YUV path darkens every pixel by ~2 levels; accurate rounding avoids it.
:func:`wav2lip_trt.kernels.yuv.bgr_to_yuv420` is this conversion, on the device."""
PIXEL_FORMATS = ("bgr24", "yuv420p")  # what VideoWriter.write takes: BGR frames, or frames converted already


def yuv420_frame_bytes(width: int, height: int) -> int:
    """Bytes of one ``yuv420p`` frame of a ``width`` x ``height`` video (padded to even sizes)."""
    return (width + width % 2) * (height + height % 2) * 3 // 2


def conversion_args(width: int, height: int) -> list[str]:
    """The ffmpeg options that turn ``bgr24`` input into ``yuv420p`` the writer's way (pad odd sizes, then swscale)."""
    pad = ["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2"] if width % 2 or height % 2 else []  # yuv420p needs even sizes
    return pad + ["-sws_flags", SWS_FLAGS, "-pix_fmt", "yuv420p"]


def check_container(path: str | os.PathLike[str], label: str = "output") -> None:
    """Raise :class:`InputError` unless ``path``'s extension names a container for H.264 + AAC."""
    suffix = Path(path).suffix.lower()
    accepted = ", ".join(CONTAINERS)
    if suffix == "":
        raise InputError(f"{label} {path} needs a file extension such as .mp4 (one of {accepted})")
    if suffix not in CONTAINERS:
        raise InputError(f"{label} {path}: a {suffix} file cannot hold H.264 video with AAC audio; "
                         f"use one of {accepted}")


def frame_rate_arg(fps: float) -> str:
    """ffmpeg rate for a float fps: 29.97002997 becomes 30000/1001, not a rounded decimal."""
    rate = Fraction(fps).limit_denominator(1001 * 1000)
    near = Fraction(fps).limit_denominator(1001)
    if abs(float(near) - fps) < 1e-9:
        rate = near
    return f"{rate.numerator}/{rate.denominator}"


@contextlib.contextmanager
def signals_deferred(*, second_raises: bool = False) -> Iterator[None]:
    """Hold the Python handlers of SIGINT, SIGTERM and SIGHUP until the block is done, then run them.

    An interrupt is an exception raised wherever the main thread is; inside ``subprocess.Popen``
    (after the fork, before the object exists) it would orphan ffmpeg and leave its temporary
    file, with nothing to clean either up. Recorded here, it is raised when the block ends, once
    both exist. ``second_raises``: a second signal inside the block runs the handler at once (a
    block that can wait for ever, such as a write to a reader that stopped, stays interruptible).
    Only the main thread has Python signal handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    held = {}

    def record(signum: int, frame: object) -> None:
        pending.append(signum)
        if second_raises and len(pending) == 2:
            held[signum](signum, frame)

    for sig in (getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)):
        handler = signal.getsignal(sig)
        if callable(handler):
            held[sig] = handler
            signal.signal(sig, record)
    try:
        yield
    finally:
        for sig, handler in held.items():
            signal.signal(sig, handler)
        if len(pending) == 1 or (pending and not second_raises):
            held[pending[0]](pending[0], None)  # the handler itself: Interrupted (or KeyboardInterrupt) now


class FFmpegPipe:
    """One ffmpeg process reading raw frames on its stdin: the one way to start, feed, finish and stop it
    (the video writer's, and a live stream's MPEG-TS on stdout).

    ffmpeg runs in a session of its own: a Ctrl-C at the terminal reaches only this process, which
    stops ffmpeg itself (:meth:`stop`) instead of racing ffmpeg's own "Exiting normally, received
    signal 2". Its messages go to a temporary file; a failure is one :class:`FFmpegError` that starts
    with ``what`` and ends with ffmpeg's last line.
    """

    def __init__(self, cmd: list[str], what: str, *, stdout: int = subprocess.DEVNULL) -> None:
        self.what = what
        self._log = tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=stdout, stderr=self._log,
                                         start_new_session=True)
        except OSError as exc:
            self._log.close()
            raise FFmpegError(f"cannot start ffmpeg ({cmd[0]}): {exc}") from None

    def write(self, data: bytes | memoryview) -> None:
        """Raises :class:`BrokenPipeError` (or another :class:`OSError`) once ffmpeg has gone: what that
        means is the caller's to say."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)

    def failure(self, why: str) -> FFmpegError:
        """``what: why: ffmpeg's last line`` (or its exit code)."""
        self._log.seek(0)
        lines = [ln for ln in self._log.read().decode(errors="replace").splitlines() if ln.strip()]
        detail = lines[-1].strip() if lines else f"exit code {self.proc.returncode}"
        return FFmpegError(f"{self.what}: {why}: {detail}")

    def finish(self) -> None:
        """The end of the input: close stdin, wait, and raise :meth:`failure` unless ffmpeg succeeded."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        if self.proc.wait() != 0:
            raise self.failure("ffmpeg failed")

    def stop(self) -> None:
        """Kill ffmpeg if it still runs, and reap it (any end but success; harmless after :meth:`finish`)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass

    def close(self) -> None:
        """Stop ffmpeg if it still runs, and drop its messages."""
        self.stop()
        self._log.close()


class VideoWriter:
    """Context manager: ``write`` BGR frames; on a clean exit the output appears atomically."""

    def __init__(
        self,
        outfile: str | os.PathLike[str],
        *,
        width: int,
        height: int,
        fps: float,
        audio: str | os.PathLike[str] | None,
        ffmpeg: str | None = None,
        encoder: str = "libx264",
        crf: int = 18,
        preset: str = "medium",
        pixel_format: str = "bgr24",
    ) -> None:
        self.outfile = Path(outfile)
        check_container(self.outfile)
        self.width, self.height, self.fps = width, height, fps
        self.audio = Path(audio) if audio is not None else None
        self.ffmpeg = find_ffmpeg(ffmpeg)
        self.encoder, self.crf, self.preset = encoder, crf, preset
        if preset not in X264_PRESETS:
            raise InputError(f"--preset {preset!r} is not a libx264 preset; choose one of {', '.join(X264_PRESETS)}")
        if pixel_format not in PIXEL_FORMATS:
            raise ValueError(f"pixel_format must be one of {PIXEL_FORMATS}, got {pixel_format!r}")
        self.pixel_format = pixel_format  # yuv420p: frames come converted (and padded to even sizes) already
        self.frame_shape = ((height, width, 3) if pixel_format == "bgr24"
                            else (yuv420_frame_bytes(width, height),))
        self.frames_written = 0
        self._pipe: FFmpegPipe | None = None
        self._tmp: Path | None = None

    def command(self, target: Path) -> list[str]:
        yuv = self.pixel_format == "yuv420p"
        width, height = (self.width + self.width % 2, self.height + self.height % 2) if yuv else (self.width, self.height)
        cmd = [
            self.ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", self.pixel_format, "-s", f"{width}x{height}",
            "-framerate", frame_rate_arg(self.fps), "-i", "pipe:0",
        ]
        if self.audio is not None:
            cmd += ["-i", str(self.audio), "-map", "0:v:0", "-map", "1:a:0"]
        cmd += ["-pix_fmt", "yuv420p"] if yuv else conversion_args(self.width, self.height)
        cmd += ["-c:v", self.encoder]
        if self.encoder == "libx264":
            cmd += ["-preset", self.preset, "-crf", str(self.crf)]
        elif self.encoder.endswith("_nvenc"):
            cmd += ["-preset", "p5", "-cq", str(self.crf)]
        if self.audio is not None:
            cmd += ["-c:a", "aac", "-b:a", "192k"]
        if target.suffix.lower() in FASTSTART_SUFFIXES:
            cmd += ["-movflags", "+faststart"]
        return cmd + [str(target)]

    def __enter__(self) -> "VideoWriter":
        try:
            with signals_deferred():  # an interrupt now would leave the file (and ffmpeg) behind
                try:
                    self.outfile.parent.mkdir(parents=True, exist_ok=True)
                    self._tmp = temporary_sibling(self.outfile)
                except OSError as exc:
                    raise InputError(f"cannot write {self.outfile}: {exc.strerror or exc}") from None
                self._pipe = FFmpegPipe(self.command(self._tmp), f"writing {self.outfile}")
        except BaseException:  # a failure, or the interrupt that arrived while ffmpeg started
            self._cleanup()
            raise
        return self

    def write(self, frame: np.ndarray) -> None:
        """One (H, W, 3) uint8 BGR frame, or with ``pixel_format="yuv420p"`` one frame's planar Y, U, V bytes."""
        if frame.shape != self.frame_shape or frame.dtype != np.uint8:
            raise ValueError(f"frame {frame.shape} {frame.dtype} != {self.frame_shape} uint8")
        assert self._pipe is not None
        try:
            self._pipe.write(np.ascontiguousarray(frame).data)
        except OSError:
            self._pipe.proc.wait()
            raise self._pipe.failure("ffmpeg stopped accepting frames") from None
        self.frames_written += 1

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        pipe = self._pipe
        try:
            if pipe is None or exc_type is not None:
                return
            pipe.finish()
            if self.frames_written == 0:
                raise FFmpegError(f"writing {self.outfile}: no frames were produced")
            assert self._tmp is not None
            publish(self._tmp, self.outfile)
            self._tmp = None
        finally:  # on any end but success (an interrupt while ffmpeg finishes too) ffmpeg must not outlive the run
            self._cleanup()

    def _cleanup(self) -> None:
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None
