"""Where a stream's frames go: a video file (H.264 + the audio, atomic as ``infer``'s), or stdout.

A file fed by an audio file gets that file's track, exactly as ``infer`` muxes it. When the audio
came from a pipe or the wall clock inserted silence, the samples the stream actually used are
recorded and muxed after the last frame (the video is copied, not re-encoded). Either way the
output appears only when complete: an error or an interrupt leaves no file.

On stdout, ``ts`` is H.264 in MPEG-TS (low-latency x264 settings, playable while it is written:
``| ffplay -``) and ``raw`` is the bare BGR frames (``| ffplay -f rawvideo -pixel_format bgr24
-video_size WxH -framerate FPS -``). A reader that goes away ends the stream with
:class:`OutputClosed`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import numpy as np

from ..audio import SAMPLE_RATE
from ..encode import FASTSTART_SUFFIXES, FFmpegPipe, VideoWriter, conversion_args, frame_rate_arg, signals_deferred
from ..errors import FFmpegError, InputError
from ..files import publish, temporary_sibling
from ..samples import write_wav

STDOUT_FORMATS = ("ts", "raw")


class OutputClosed(InputError):
    """The reader of stdout went away."""


class FileSink:
    """``write`` frames; on a clean exit ``outfile`` appears with its audio."""

    def __init__(self, outfile: Path, *, width: int, height: int, fps: float, audio: Path | None, record: bool,
                 ffmpeg: str, encoder: str, crf: int, preset: str) -> None:
        self.outfile, self.audio, self.record, self.ffmpeg = Path(outfile), audio, record, ffmpeg
        self._work: Path | None = None
        self._samples: list[np.ndarray] = []
        target = self.outfile
        if record:
            self._work = Path(tempfile.mkdtemp(prefix="wav2lip-trt-stream-"))
            target = self._work / f"video{self.outfile.suffix}"
        self.writer = VideoWriter(target, width=width, height=height, fps=fps, audio=None if record else audio,
                                  ffmpeg=ffmpeg, encoder=encoder, crf=crf, preset=preset)

    def add_samples(self, samples: np.ndarray) -> None:
        """The stream's audio as it was used (recorded only when it must be muxed afterwards)."""
        if self.record:
            self._samples.append(samples.copy())

    def __enter__(self) -> "FileSink":
        try:
            self.writer.__enter__()
        except BaseException:
            self._cleanup()
            raise
        return self

    def write(self, frame: np.ndarray) -> None:
        self.writer.write(frame)

    @property
    def frames_written(self) -> int:
        return self.writer.frames_written

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            self.writer.__exit__(exc_type, exc, tb)
            if exc_type is None and self.record:
                self._mux()
        finally:
            self._cleanup()

    def _mux(self) -> None:
        assert self._work is not None
        wav = write_wav(self._work / "audio.wav", np.concatenate(self._samples or [np.zeros(0, np.float32)]),
                        SAMPLE_RATE)
        self.outfile.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_sibling(self.outfile)
        cmd = [self.ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-i", str(self.writer.outfile),
               "-i", str(wav), "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy", "-c:a", "aac", "-b:a", "192k"]
        if self.outfile.suffix.lower() in FASTSTART_SUFFIXES:
            cmd += ["-movflags", "+faststart"]
        try:
            proc = subprocess.run(cmd + [str(tmp)], stdin=subprocess.DEVNULL, capture_output=True, check=False)
            if proc.returncode != 0:
                lines = [ln for ln in proc.stderr.decode(errors="replace").splitlines() if ln.strip()]
                raise FFmpegError(f"writing {self.outfile}: muxing the audio failed: {lines[-1] if lines else proc.returncode}")
            publish(tmp, self.outfile)
        finally:
            tmp.unlink(missing_ok=True)

    def _cleanup(self) -> None:
        if self._work is not None:
            shutil.rmtree(self._work, ignore_errors=True)
            self._work = None


class StdoutSink:
    """Frames to stdout as MPEG-TS (through ffmpeg: :class:`~wav2lip_trt.encode.FFmpegPipe`, as the file
    writer's) or raw BGR."""

    def __init__(self, kind: str, *, width: int, height: int, fps: float, ffmpeg: str, crf: int,
                 out: BinaryIO | None = None) -> None:
        if kind not in STDOUT_FORMATS:
            raise InputError(f"--stdout-format must be one of {', '.join(STDOUT_FORMATS)}, got {kind!r}")
        self.kind, self.width, self.height, self.fps, self.ffmpeg, self.crf = kind, width, height, fps, ffmpeg, crf
        self.out = out if out is not None else sys.stdout.buffer
        self.frames_written = 0
        self._pipe: FFmpegPipe | None = None

    def command(self) -> list[str]:
        """ffmpeg: raw BGR on stdin to low-latency H.264 in MPEG-TS on stdout."""
        return [self.ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "bgr24",
                "-s", f"{self.width}x{self.height}", "-framerate", frame_rate_arg(self.fps), "-i", "pipe:0",
                *conversion_args(self.width, self.height), "-c:v", "libx264", "-preset", "veryfast",
                "-tune", "zerolatency", "-crf", str(self.crf), "-f", "mpegts", "pipe:1"]

    def __enter__(self) -> "StdoutSink":
        if self.kind == "ts":
            try:
                with signals_deferred():  # an interrupt inside the start would leave ffmpeg running
                    self._pipe = FFmpegPipe(self.command(), "writing MPEG-TS to stdout", stdout=self.out.fileno())
            except BaseException:
                self._close()
                raise
        return self

    def write(self, frame: np.ndarray) -> None:
        """One frame, whole: Ctrl-C or SIGTERM during the write lands after it (a second one at once), so
        what reaches the reader ends on a frame boundary."""
        data = np.ascontiguousarray(frame).data
        try:
            with signals_deferred(second_raises=True):
                if self._pipe is not None:
                    self._pipe.write(data)
                else:
                    self._write_raw(data)
        except (BrokenPipeError, ConnectionResetError):
            raise self._closed_by_reader() from None
        except OSError as exc:
            raise OutputClosed(f"cannot write to stdout after {self.frames_written} frames: {exc.strerror or exc}") from None
        self.frames_written += 1

    def _write_raw(self, data: memoryview) -> None:
        """Every byte, with the file's own writes: a buffered writer interrupted by a signal returns with
        part of a large write still unwritten (seen with a pipe whose reader had paused)."""
        try:
            fd = self.out.fileno()
        except (AttributeError, OSError, ValueError):  # not a file (an in-memory buffer)
            self.out.write(data)
            self.out.flush()
            return
        self.out.flush()
        view, done = memoryview(data).cast("B"), 0
        while done < len(view):
            done += os.write(fd, view[done:])

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            if self._pipe is not None and exc_type is None:
                try:
                    self._pipe.finish()
                except FFmpegError as failure:  # ffmpeg met the closed stdout before this process did
                    if "Broken pipe" in str(failure):
                        raise self._closed_by_reader() from None
                    raise
        finally:
            self._close()

    def _closed_by_reader(self) -> OutputClosed:
        return OutputClosed(f"stdout was closed by its reader after {self.frames_written} frames")

    def _close(self) -> None:
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None


def stdout_is_terminal() -> bool:
    try:
        return os.isatty(sys.stdout.fileno())
    except (OSError, ValueError):
        return False
