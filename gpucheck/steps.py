"""The steps that do not run the pipeline themselves: environment, dependencies, generated inputs, pytest -m gpu,
compute-sanitizer on the Triton kernels, DALI's decode parity, and the TensorRT-RTX experiment."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import REPO
from .environment import collect_env, find_ffmpeg_exe, save_nvidia_smi
from .logs import last_line, parse_junit
from .runner import StepContext, run_logged
from .staging import child_env, missing_runtime
from .verdicts import FAILED, Verdict, failed, judge_compute_sanitizer, judge_pytest, not_run, passed

KERNEL_TEST = "tests/test_kernels_backend.py::test_compiled_kernels_equal_torch_reference_on_cuda"
SANITIZER_TOOLS = ("memcheck", "racecheck")


@dataclass(frozen=True)
class Config:
    """Sizes of one check: the GPU's, or tiny ones for the CPU rehearsal (which checks the check itself)."""

    rehearsal: bool = False

    @property
    def device(self) -> str:
        return "cpu" if self.rehearsal else "cuda"

    def precision(self, wanted: str) -> str:
        return "fp32" if self.rehearsal else wanted  # torch FP16 needs CUDA

    @property
    def clips(self) -> dict[str, tuple[int, int, float]]:
        """name -> (width, height, seconds) of the generated face videos."""
        if self.rehearsal:
            return {"small": (160, 128, 1.0), "720p": (160, 128, 1.0), "1080p": (192, 144, 1.0), "4k": (192, 144, 0.5)}
        return {"small": (320, 240, 2.0), "720p": (1280, 720, 2.0), "1080p": (1920, 1080, 2.5), "4k": (3840, 2160, 1.0)}

    @property
    def audios(self) -> dict[str, float]:
        """name -> seconds of the 16 kHz speech-like WAVs (one output frame per 40 ms)."""
        return {"short": 0.6, "long": 1.0} if self.rehearsal else {"short": 1.2, "long": 2.4}


def step_env(cfg: Config, env_out: dict[str, Any]):  # noqa: ANN201
    def run(ctx: StepContext) -> Verdict:
        env_out.update(collect_env(rehearsal=cfg.rehearsal))
        smi = save_nvidia_smi(ctx.out)
        if smi:
            ctx.add_file(ctx.out / smi)
        gpu = env_out.get("gpu") or {}
        if not gpu and not cfg.rehearsal:
            return failed("torch sees no CUDA GPU")
        return passed(f"{gpu.get('name', 'no GPU')}, torch {env_out['torch']} (CUDA {env_out['cuda']})"
                      + ("" if smi else "; nvidia-smi -q not saved (no nvidia-smi)"), 1)
    return run


def step_deps(cfg: Config):  # noqa: ANN201
    """What the pipeline needs at run time on this image; the package must import with it."""

    def run(ctx: StepContext) -> Verdict:
        missing = missing_runtime()
        path, desc = find_ffmpeg_exe()
        if path is None:
            missing.append(f"ffmpeg ({desc}; stage it: make gpu-stage, then carry .gpu/run1)")
        probe = "import wav2lip_trt.cli, wav2lip_trt.pipeline, wav2lip_trt.samples, wav2lip_trt.random_weights"
        proc = run_logged([sys.executable, "-c", probe], ctx.work / "import-probe.log", ctx.remaining(),
                          env=child_env())
        if proc.returncode != 0:
            missing.append(f"the package does not import: {last_line(proc.text)}")
        ctx.details.update(ffmpeg=desc, missing=missing)
        if missing:
            return failed("missing: " + "; ".join(missing))
        ctx.state["ffmpeg"] = path
        return passed(f"ffmpeg {desc}; the package imports", 1)
    return run


def step_prepare(cfg: Config):  # noqa: ANN201
    """Random-weight checkpoints (the released format) and the generated clips and 16 kHz WAVs."""

    def run(ctx: StepContext) -> Verdict:
        from wav2lip_trt.random_weights import write_random_checkpoints, write_random_scoring_checkpoints
        from wav2lip_trt.samples import float_to_int16, speechlike_audio, talking_face_frames, write_video, write_wav

        media = ctx.work / "media"
        media.mkdir(parents=True, exist_ok=True)
        ctx.state["checkpoints"] = write_random_checkpoints(ctx.work / "checkpoints", seed=0)
        expert, _, disc = write_random_scoring_checkpoints(ctx.work / "checkpoints", seed=0)
        ctx.state["scoring"] = (expert, disc)
        ctx.state["audio"] = {name: write_wav(media / f"speech-{name}.wav", float_to_int16(speechlike_audio(s, seed=1)),
                                              16000) for name, s in cfg.audios.items()}
        ctx.state["clips"] = {name: write_video(media / f"face-{name}.mp4", talking_face_frames(round(s * 25), w, h, seed=2),
                                                25.0, ffmpeg=ctx.state.get("ffmpeg"))
                              for name, (w, h, s) in cfg.clips.items()}
        return passed("random-weight checkpoints; clips " + ", ".join(f"{k} {w}x{h} {s:g} s"
                                                                      for k, (w, h, s) in cfg.clips.items()),
                      len(cfg.clips))
    return run


def pytest_cmd(xml: Path, *selection: str) -> list[str]:
    return [sys.executable, "-m", "pytest", *selection, "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
            f"--junitxml={xml}", "-o", "junit_family=xunit2"]


def step_pytest(cfg: Config):  # noqa: ANN201
    """pytest -m gpu over tests/: a collection error fails; skips for a missing package are listed as not run."""

    def run(ctx: StepContext) -> Verdict:
        xml, log = ctx.out / "pytest-gpu.xml", ctx.out / "pytest-gpu.log"
        proc = run_logged(pytest_cmd(xml, "-m", "gpu", "tests"), log, ctx.remaining(), env=child_env())
        ctx.add_file(log)
        if proc.timed_out:
            return failed(f"timed out after {proc.seconds:.0f} s")
        junit = parse_junit(xml) if xml.is_file() else None
        if junit is not None:
            ctx.add_file(xml)
        return judge_pytest(junit, proc.returncode)
    return run


def step_compute_sanitizer(cfg: Config):  # noqa: ANN201
    """compute-sanitizer memcheck and racecheck over the compiled Triton kernels' GPU test (small frames)."""

    def run(ctx: StepContext) -> Verdict:
        import shutil

        tool = shutil.which("compute-sanitizer")
        if tool is None or cfg.rehearsal:
            return not_run("compute-sanitizer is not on PATH" if tool is None else "rehearsal: no CUDA kernels to check")
        logs = {}
        for i, name in enumerate(SANITIZER_TOOLS):
            log = ctx.out / f"compute-sanitizer-{name}.log"
            share = ctx.remaining() / (len(SANITIZER_TOOLS) - i)
            cmd = [tool, "--tool", name, "--target-processes", "all", "--error-exitcode", "9",
                   *pytest_cmd(ctx.work / f"cs-{name}.xml", "-m", "gpu", KERNEL_TEST)]
            proc = run_logged(cmd, log, share, env=child_env(TRITON_CACHE_DIR=str(ctx.work / "triton-cache")))
            ctx.add_file(log)
            if proc.timed_out:  # instrumentation is slow; a hang would show in pytest-gpu, which runs the same test
                return not_run(f"out of time: {name} needed more than {proc.seconds:.0f} s", **{k: "done" for k in logs})
            logs[name] = proc.text
        return judge_compute_sanitizer(logs)
    return run


def step_dali(cfg: Config):  # noqa: ANN201
    """DALI's NVDEC decode against OpenCV's frames (tests/test_decode.py's DALI tests), where DALI is staged."""

    def run(ctx: StepContext) -> Verdict:
        from .staging import importable

        if not importable("nvidia.dali"):
            return not_run("DALI is not staged: about 200 MiB of wheels do not fit the two 64 MiB uploads")
        if cfg.rehearsal:
            return not_run("rehearsal: DALI decodes on the GPU")
        xml, log = ctx.out / "dali.xml", ctx.out / "dali.log"
        proc = run_logged(pytest_cmd(xml, "-m", "gpu", "-k", "dali", "tests/test_decode.py"), log, ctx.remaining(),
                          env=child_env())
        ctx.add_file(log)
        junit = parse_junit(xml) if xml.is_file() else None
        verdict = judge_pytest(junit, proc.returncode)
        if verdict.status != FAILED and junit and junit["counts"]["skipped"]:
            return not_run(f"DALI tests skipped: {junit['skipped'][0][1]}")
        return verdict
    return run


def step_rtx(cfg: Config):  # noqa: ANN201
    """The TensorRT-RTX-on-Hopper experiment: build both engines on this GPU, then the parity rungs on them.
    Whatever happens is the result (a refusal of SM90, with its error, is one)."""

    def run(ctx: StepContext) -> Verdict:
        from .staging import importable

        if not (importable("tensorrt_rtx") or importable("tensorrt_rtx_bindings")):
            return not_run("TensorRT-RTX is not unpacked: its first piece comes with run 1 (.gpu/run1), its second "
                           "with run 2 (.gpu/run2), on the same machine")
        if cfg.rehearsal:
            return not_run("rehearsal: TensorRT-RTX builds on the GPU")
        if "checkpoints" not in ctx.state:  # a fresh machine without run 1's ffmpeg: the engines need no media
            from wav2lip_trt.random_weights import write_random_checkpoints

            ctx.state["checkpoints"] = write_random_checkpoints(ctx.work / "checkpoints", seed=0)
        wav2lip, s3fd = (str(p) for p in ctx.state["checkpoints"])
        py, engines, outcome = sys.executable, ctx.work / "engines", {}
        commands = {f"build-{p}": [py, "-m", "wav2lip_trt", "build-engines", "--checkpoint_path", wav2lip,
                                   "--s3fd-checkpoint", s3fd, "--out", engines / p, "--precision", p, "--flavor",
                                   "tensorrt-rtx", "--compute-capabilities", "current"] for p in ("fp32", "fp16")}
        commands["parity"] = [py, "-m", "wav2lip_trt", "parity", "-q", "--checkpoint_path", wav2lip, "--s3fd-checkpoint",
                              s3fd, "--work-dir", ctx.work / "rtx-parity", "--flavor", "tensorrt-rtx", "--rungs",
                              "tensorrt-fp32,tensorrt-fp16", "--no-end-to-end", "--json", ctx.out / "rtx-parity.json"]
        if ctx.state.get("clips"):
            commands["infer"] = [py, "-m", "wav2lip_trt", "infer", "--checkpoint_path", wav2lip, "--s3fd-checkpoint",
                                 s3fd, "--face", ctx.state["clips"]["small"], "--audio", ctx.state["audio"]["short"],
                                 "--outfile", ctx.work / "rtx.mp4", "--backend", "tensorrt", "--flavor", "tensorrt-rtx",
                                 "--engines", engines / "fp16", "--precision", "fp16", "-q"]
        for i, (name, cmd) in enumerate(commands.items()):
            log = ctx.out / f"rtx-{name}.log"
            proc = run_logged(cmd, log, ctx.remaining() / (len(commands) - i), env=child_env())
            ctx.add_file(log)
            outcome[name] = {"exit": proc.returncode, "seconds": proc.seconds, "last_line": last_line(proc.text)}
        (ctx.out / "rtx-experiment.json").write_text(json.dumps(outcome, indent=2) + "\n")
        ctx.add_file(ctx.out / "rtx-experiment.json")
        lines = "; ".join(f"{k}: exit {v['exit']}, {v['last_line']}" for k, v in outcome.items())
        ctx.markdown += [f"- `{k}`: exit {v['exit']} in {v['seconds']} s: {v['last_line']}" for k, v in outcome.items()]
        return passed(f"experiment recorded (whatever happened is the result): {lines}", len(outcome), experiment=outcome)
    return run

