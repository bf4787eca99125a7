"""Every backend that can run here runs the whole pipeline; the others fail with one clear line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from wav2lip_trt.backends import RunnerRequest, create_runners
from wav2lip_trt.errors import EngineError, InputError
from wav2lip_trt.options import InferenceOptions
from wav2lip_trt.session import run_inference
from wav2lip_trt.samples import float_to_int16, speechlike_audio, talking_face_frames, write_video, write_wav


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("backends")
    video = write_video(d / "face.mp4", talking_face_frames(20, 128, 96, seed=2), 25.0)
    return video, write_wav(d / "speech.wav", float_to_int16(speechlike_audio(0.8, seed=3)), 16000)


def run(clip, checkpoints, out: Path, **kw) -> tuple[dict[str, np.ndarray], object]:
    options = InferenceOptions(checkpoint_path=checkpoints[0], s3fd_checkpoint=checkpoints[1], face=clip[0],
                               audio=clip[1], outfile=out / "out.mp4", dump_intermediates=out / "dump", **kw)
    result = run_inference(options)
    return {p.stem: np.load(p) for p in (out / "dump").glob("*.npy")}, result


def test_onnxruntime_matches_torch_within_one_level(clip, checkpoints, tmp_path) -> None:
    ref, ref_result = run(clip, checkpoints, tmp_path / "torch", device="cpu")
    ort, ort_result = run(clip, checkpoints, tmp_path / "ort", device="cpu", backend="onnxruntime")
    assert (ref_result.backend, ort_result.backend) == ("torch", "onnxruntime")
    np.testing.assert_array_equal(ort["det_boxes"], ref["det_boxes"])
    np.testing.assert_array_equal(ort["boxes"], ref["boxes"])
    assert np.abs(ort["pred"] - ref["pred"]).max() < 1e-4
    assert np.abs(ort["frames"].astype(int) - ref["frames"]).max() <= 1
    assert {r["stage"] for r in ort_result.stages} >= {"decode", "detect", "postprocess", "crop", "generate", "paste", "encode"}


def test_auto_on_cpu_is_torch_fp32(checkpoints, caplog) -> None:
    caplog.set_level("INFO")
    runners = create_runners("auto", RunnerRequest(checkpoints[0], checkpoints[1], torch.device("cpu")))
    assert (runners.backend, runners.precision) == ("torch", "fp32")
    assert "backend auto: torch fp32 on cpu" in caplog.text


def test_cpu_runners_follow_the_runner_contract(checkpoints) -> None:
    from wav2lip_trt.runners.base import Runner

    for backend, s3fd in (("torch", checkpoints[1]), ("onnxruntime", None)):  # one ONNX export is enough
        with create_runners(backend, RunnerRequest(checkpoints[0], s3fd, torch.device("cpu"))) as runners:
            assert runners.stream is None
            for runner in (r for r in (runners.detector, runners.generator) if r is not None):
                assert isinstance(runner, Runner)
                assert runner.stream is None
                assert set(runner.input_dtypes) == set(runner.input_names)
                assert set(runner.input_dtypes.values()) == {torch.float32}
            if backend == "torch":
                assert not runners.generator.cuda_graphs and not runners.detector.cuda_graphs


def test_unavailable_backends_say_why(checkpoints) -> None:
    with pytest.raises(InputError, match="unknown backend 'tvm'; choose one of: auto, torch, onnxruntime, tensorrt"):
        create_runners("tvm", RunnerRequest(checkpoints[0], None, torch.device("cpu")))
    with pytest.raises(InputError, match="fp16 with the torch backend needs --device cuda"):
        create_runners("torch", RunnerRequest(checkpoints[0], None, torch.device("cpu"), precision="fp16"))
    if not torch.cuda.is_available():
        with pytest.raises(EngineError, match="NVIDIA GPU"):
            create_runners("tensorrt", RunnerRequest(checkpoints[0], None, torch.device("cpu")))


@pytest.mark.gpu
def test_torch_cuda_fp16_close_to_cpu_fp32(clip, checkpoints, tmp_path) -> None:
    ref, _ = run(clip, checkpoints, tmp_path / "cpu", device="cpu")
    gpu, result = run(clip, checkpoints, tmp_path / "cuda", device="cuda", precision="fp16")
    assert result.backend == "torch" and result.precision == "fp16"
    same_box = (gpu["det_boxes"] == ref["det_boxes"]).all(axis=1)
    assert same_box.mean() >= 0.9
    assert np.abs(gpu["pred"][same_box] - ref["pred"][same_box]).max() < 2e-2


def engine_flavor() -> tuple[str, tuple[str, ...]]:
    """The TensorRT flavour (and build targets) that can build engines for this machine's GPU.

    Full TensorRT builds for the GPU it runs on and refuses ``--compute-capabilities``; TensorRT-RTX
    needs a target, and ``current`` only where the GPU is one it supports (not Hopper: no SM90).
    """
    from wav2lip_trt.build_engines import load_tensorrt

    if _has("tensorrt"):
        return "tensorrt", ()
    if not (_has("tensorrt_rtx_bindings") or _has("tensorrt_rtx")):
        pytest.skip("neither TensorRT nor TensorRT-RTX is installed")
    rtx = load_tensorrt("tensorrt-rtx")
    major, minor = torch.cuda.get_device_capability()
    supported = sorted(m for m in dir(rtx.module.ComputeCapability) if m.startswith("SM"))
    if f"SM{major}{minor}" not in supported:
        pytest.skip(f"TensorRT-RTX {rtx.version} cannot build for this GPU (compute capability {major}.{minor}; "
                    f"it supports {', '.join(supported)}); Hopper (SM90) needs NVIDIA's full tensorrt")
    return "tensorrt-rtx", ("current",)


@pytest.mark.gpu
def test_tensorrt_engines_run_and_match_torch(clip, checkpoints, tmp_path) -> None:
    from wav2lip_trt.build_engines import BuildOptions, build_engines

    flavor, targets = engine_flavor()
    engines = tmp_path / "engines"
    build_engines(BuildOptions(checkpoint_path=checkpoints[0], s3fd_checkpoint=checkpoints[1], out=engines,
                               flavor=flavor, compute_capabilities=targets), show_progress=False)
    ref, _ = run(clip, checkpoints, tmp_path / "cpu", device="cpu")
    trt, result = run(clip, checkpoints, tmp_path / "trt", device="cuda", backend="tensorrt", engines_dir=engines,
                      flavor=flavor)
    assert result.backend == "tensorrt"
    same_box = (trt["det_boxes"] == ref["det_boxes"]).all(axis=1)
    assert same_box.mean() >= 0.9
    assert np.abs(trt["pred"][same_box] - ref["pred"][same_box]).max() < 2e-2


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@pytest.mark.gpu
def test_cuda_graph_replay_equals_eager(checkpoints) -> None:
    from wav2lip_trt.checkpoints import load_wav2lip
    from wav2lip_trt.runners.base import WAV2LIP_INPUTS, WAV2LIP_OUTPUTS
    from wav2lip_trt.runners.torch_runner import TorchRunner

    stream = torch.cuda.Stream()
    eager = TorchRunner(load_wav2lip(checkpoints[0]), WAV2LIP_INPUTS, WAV2LIP_OUTPUTS, device="cuda",
                        dtype=torch.float16, channels_last=True, stream=stream)
    graphed = TorchRunner(load_wav2lip(checkpoints[0]), WAV2LIP_INPUTS, WAV2LIP_OUTPUTS, device="cuda",
                          dtype=torch.float16, channels_last=True, cuda_graphs=True, graph_batch=8, stream=stream)
    assert graphed.stream is stream and eager.stream is stream

    def feed_of(batch: int) -> dict[str, torch.Tensor]:
        return {"mel": (torch.rand(batch, 1, 80, 16, generator=gen) * 8 - 4).to("cuda"),
                "face": torch.rand(batch, 6, 96, 96, generator=gen).to("cuda")}

    gen = torch.Generator().manual_seed(0)
    with torch.cuda.stream(stream):  # inputs made, and outputs read, on the runners' stream (the contract)
        full = feed_of(8)
        for batch in (8, 8, 12, 8):  # capture, replay, larger than the graph (eager), replay after it
            feed = full if batch == 8 else feed_of(batch)
            got = graphed.infer(feed)["pred"].clone()
            torch.testing.assert_close(got, eager.infer(feed)["pred"])
        # The tail batch: padded up to the graph's 8 rows, sliced back to 3. Rows are computed
        # independently, so it matches eager at batch 8 with the same first rows; eager at batch 3
        # may pick other cuDNN algorithms, hence an FP16-sized tolerance there.
        tail = feed_of(3)
        got = graphed.infer(tail)["pred"].clone()
        assert got.shape == (3, 3, 96, 96)
        padded = {n: torch.cat([tail[n], full[n][3:]]) for n in tail}
        torch.testing.assert_close(got, eager.infer(padded)["pred"][:3])
        torch.testing.assert_close(got, eager.infer(tail)["pred"], atol=2e-3, rtol=0)
    assert graphed.cuda_graphs and graphed.graph_batch == 8 and graphed._graph is not None
    assert graphed._graph.batch == 8
