"""The measured runs and what is derived from them: plain data, so a report can be printed or saved
as JSON without knowing how the runs were made."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .options import BenchOptions
from .timing import Spread


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
    threads: int | None = None  # torch's intra-op threads in the run (bit-identical outputs need equal counts)
    user_seconds: float = 0.0  # CPU time of the whole process (its ffmpeg included), from wait4's rusage
    sys_seconds: float = 0.0
    minor_faults: int = 0  # page faults of the whole process: what fresh memory costs (see execution.memory)
    steady_fps: float | None = None  # frames/s from the first written batch to the last (None: under two batches)
    first_batch_seconds: float | None = None  # the call's start to its first written batch: the start-up, apart

    @property
    def sys_share(self) -> float:
        cpu = self.user_seconds + self.sys_seconds
        return self.sys_seconds / cpu if cpu > 0 else 0.0


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
    def faults_per_frame(self) -> Spread:
        """Minor page faults of the whole process per output frame (model loading included)."""
        return Spread.of([r.minor_faults / r.frames for r in self.runs if r.frames])

    @property
    def sys_percent(self) -> Spread:
        """System time as a share of the process's CPU time, in %."""
        return Spread.of([100 * r.sys_share for r in self.runs])

    @property
    def steady_frames_per_second(self) -> Spread | None:
        """Frames per second from the first written batch to the last: the rate without the start-up."""
        values = [r.steady_fps for r in self.runs if r.steady_fps is not None]
        return Spread.of(values) if values else None

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
            row = {"stage": name, "busy_seconds": busy.to_json(), "items": items,
                   "items_per_second": round(items / busy.median, 2) if busy.median > 0 and items else None}
            gpu = [float(r["gpu_seconds"]) for r in found if "gpu_seconds" in r]  # CUDA events (GPU runs)
            if gpu:
                row["gpu_seconds"] = Spread.of(gpu).to_json()
            rows.append(row)
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
            f" {'steady fps':>11} {'GPU MiB torch/device':>21} {'faults/frame':>14} {'sys %':>7} {'threads':>7}",
        ]
        for m in self.modes:
            run = m.runs[0]
            what = f"{run.backend} {run.precision} {run.device}"
            gpu, device = m.gpu_peak_mib, m.gpu_device_peak_mib
            steady = m.steady_frames_per_second
            steady_text = "n/a" if steady is None else f"{steady.median:.2f}"
            gpu_text = "" if gpu is None else f"{gpu.median:.0f}/{'?' if device is None else f'{device.median:.0f}'}"
            lines.append(
                f"{m.mode:<12} {what:<22} {_spread(m.seconds, 2):>22} {_spread(m.frames_per_second, 2):>20} "
                f"{_spread(m.realtime_factor, 3):>20} {_spread(m.peak_rss_mib, 0):>22} {steady_text:>11} {gpu_text:>21}"
                f" {m.faults_per_frame.median:>14.0f} {m.sys_percent.median:>7.1f} {run.threads or '?':>7}"
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
                      f"  {'stage':<12} {'busy s':>9} {'items':>7} {'items/s':>10} {'GPU s':>9}"]
            for row in stages:
                rate = "" if row["items_per_second"] is None else f"{row['items_per_second']:.1f}"
                gpu_s = f"{row['gpu_seconds']['median']:.3f}" if "gpu_seconds" in row else ""
                lines.append(f"  {row['stage']:<12} {row['busy_seconds']['median']:>9.3f} {row['items']:>7} {rate:>10}"
                             f" {gpu_s:>9}")
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
                    "process_seconds": m.process_seconds.to_json(), "threads": m.runs[0].threads,
                    "minor_faults_per_frame": m.faults_per_frame.to_json(), "sys_percent": m.sys_percent.to_json(),
                    "steady_frames_per_second": None if m.steady_frames_per_second is None
                    else m.steady_frames_per_second.to_json(),
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
