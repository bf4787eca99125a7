"""The scoring networks as graphs like S3FD and Wav2Lip: ONNX export, ``build-engines``, runners."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from wav2lip_trt.backends import RunnerRequest, create_graph_runners
from wav2lip_trt.build_engines import MODELS, BuildOptions, build_engines, export_onnx
from wav2lip_trt.build_engines.export import SCORING_MODELS
from wav2lip_trt.checkpoints import load_network
from wav2lip_trt.random_weights import (random_expert_state_dict, save_wav2lip_checkpoint,
                                        write_random_scoring_checkpoints)
from wav2lip_trt.samples import float_to_int16, speechlike_audio, talking_face_frames, write_video, write_wav
from wav2lip_trt.scoring.score import ScoreOptions, score_video
from wav2lip_trt.tensor_names import SCORING_GRAPHS

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

# per-sample inputs in each tower's real range
RANGES = {"expert_audio": (-4.0, 4.0), "expert_face": (0.0, 1.0), "disc_qual": (0.0, 1.0),
          "syncnet_lip": (0.0, 255.0), "syncnet_audio": (-20.0, 20.0)}


@pytest.fixture(scope="module")
def scoring_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scoring-graphs")
    expert, syncnet, disc = write_random_scoring_checkpoints(folder, seed=4)
    return {"expert": expert, "syncnet_v2": syncnet, "disc_qual": disc}


def feed(graph: str, batch: int, seed: int = 0) -> torch.Tensor:
    _, _, _, shape = SCORING_GRAPHS[graph]
    low, high = RANGES[graph]
    rng = np.random.default_rng([seed, len(graph)])
    return torch.from_numpy(rng.uniform(low, high, (batch, *shape)).astype(np.float32))


def test_every_scoring_tower_is_a_model():
    assert set(SCORING_MODELS) == {"expert_audio", "expert_face", "syncnet_lip", "syncnet_audio", "disc_qual"}
    assert set(MODELS) == {"s3fd", "wav2lip", *SCORING_MODELS}
    assert {MODELS[m].network for m in SCORING_MODELS} == {"expert", "syncnet_v2", "disc_qual"}
    assert {MODELS[m].checkpoint_option for m in SCORING_MODELS} == {
        "--expert-checkpoint", "--syncnet-checkpoint", "--disc-checkpoint"}


def test_export_is_reproducible_and_named(tmp_path):
    import onnx

    expert = save_wav2lip_checkpoint(tmp_path / "lipsync_expert.pth", random_expert_state_dict(0))
    a = export_onnx("expert_audio", expert, tmp_path / "a.onnx")
    b = export_onnx("expert_audio", expert, tmp_path / "b.onnx")
    assert a.sha256 == b.sha256 and a.path.read_bytes() == b.path.read_bytes()
    graph = onnx.load(str(a.path)).graph
    assert [i.name for i in graph.input] == ["mel"] and [o.name for o in graph.output] == ["audio_embedding"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    with pytest.raises(ValueError, match="unknown model"):
        export_onnx("nope", expert, tmp_path / "c.onnx")


FP16_SCALE_BOUND = 2e-3  # FP16 export: max |error| / max |output| (measured <= 8e-4, syncnet_audio 4.9e-4)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_build_engines_exports_every_tower_and_onnxruntime_matches_torch(tmp_path, scoring_files, precision):
    """build-engines --onnx-only with the three scoring checkpoints: five graphs, each equal to its
    torch tower on inputs of its real range (FP32 within 1e-4; FP16 within 2e-3 of the output's scale)."""
    from wav2lip_trt.runners.onnxruntime_runner import OnnxRuntimeRunner

    options = BuildOptions(expert_checkpoint=scoring_files["expert"], disc_checkpoint=scoring_files["disc_qual"],
                           syncnet_checkpoint=scoring_files["syncnet_v2"], out=tmp_path / "eng", onnx_only=True,
                           precision=precision)
    report = build_engines(options, show_progress=False)
    assert [r.model for r in report.results] == ["expert_audio", "expert_face", "disc_qual", "syncnet_lip",
                                                 "syncnet_audio"]
    assert all(r.skipped for r in build_engines(options, show_progress=False).results)  # up to date
    for r in report.results:
        manifest = json.loads(r.onnx.with_name(r.onnx.name + ".json").read_text())
        spec = MODELS[r.model]
        assert manifest["checkpoint"]["path"] == str(scoring_files[spec.network])
        x = feed(r.model, 3)
        with torch.no_grad():
            want = spec.module(load_network(spec.network, scoring_files[spec.network]))(x)
        got = OnnxRuntimeRunner(r.onnx).infer({spec.input_names[0]: x})[spec.output_names[0]]
        assert got.shape == want.shape and got.dtype == torch.float32
        if precision == "fp32":
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        else:
            assert 0 < float((got - want).abs().max()) <= FP16_SCALE_BOUND * float(want.abs().max()), r.model


def test_tensorrt_rtx_builds_every_tower_on_the_cpu(tmp_path, scoring_files):
    """The real builder, no GPU: five FP16 engines whose manifests record the scoring profile."""
    from wav2lip_trt.build_engines import load_tensorrt
    from wav2lip_trt.errors import MissingDependencyError

    try:
        load_tensorrt("tensorrt-rtx")
    except MissingDependencyError as exc:
        pytest.skip(str(exc))
    options = BuildOptions(expert_checkpoint=scoring_files["expert"], disc_checkpoint=scoring_files["disc_qual"],
                           syncnet_checkpoint=scoring_files["syncnet_v2"], out=tmp_path / "eng",
                           flavor="tensorrt-rtx", scoring_batch=(1, 20, 32))
    report = build_engines(options, show_progress=False)
    assert [r.engine_status for r in report.results] == ["built"] * 5
    for r in report.results:
        manifest = json.loads(r.engine.with_name(r.engine.name + ".json").read_text())
        (inp,) = manifest["inputs"]
        _, name, _, shape = SCORING_GRAPHS[r.model]
        assert inp["name"] == name
        assert inp["profile"] == {"min": [1, *shape], "opt": [20, *shape], "max": [32, *shape]}
        assert manifest["build"]["command"].count("--expert-checkpoint") == (MODELS[r.model].network == "expert")
        assert r.engine_bytes > 1_000_000


def test_graph_runners_share_one_load_and_run_any_backend(scoring_files):
    request = RunnerRequest(checkpoint_path=None, s3fd_checkpoint=None, device=torch.device("cpu"))
    graphs = {"expert_audio": scoring_files["expert"], "expert_face": scoring_files["expert"]}
    with create_graph_runners("torch", graphs, request) as made:
        tower_a, tower_f = made["expert_audio"].module, made["expert_face"].module
        assert tower_a.model is tower_f.model  # the expert's file was read once for both towers
        x = feed("expert_face", 2)
        torch_out = made["expert_face"].infer({"faces": x})["face_embedding"]
    with create_graph_runners("onnxruntime", graphs, request) as made:
        assert made.backend == "onnxruntime" and made.precision == "fp32"
        ort_out = made["expert_face"].infer({"faces": x})["face_embedding"]
    torch.testing.assert_close(ort_out, torch_out, atol=1e-5, rtol=1e-5)
    with pytest.raises(Exception, match="TensorRT engines run on an NVIDIA GPU|engine"):
        create_graph_runners("tensorrt", graphs, request)


def test_onnxruntime_backend_matches_torch(tmp_path, scoring_files):
    pytest.importorskip("python_speech_features")
    wav = write_wav(tmp_path / "a.wav", float_to_int16(speechlike_audio(0.72, seed=2)), 16000)
    video = write_video(tmp_path / "crop.mp4", talking_face_frames(18, 224, 224, seed=2), 25.0, audio=wav)
    common = dict(video=video, syncnet_checkpoint=scoring_files["syncnet_v2"], expert_checkpoint=scoring_files["expert"],
                  disc_checkpoint=scoring_files["disc_qual"], crops=True, device="cpu")
    torch_report = score_video(ScoreOptions(**common)).clips[0]
    ort_report = score_video(ScoreOptions(backend="onnxruntime", **common)).clips[0]
    assert ort_report.lse.av_offset == torch_report.lse.av_offset
    assert abs(ort_report.lse.min_dist - torch_report.lse.min_dist) < 1e-4
    assert abs(ort_report.lse.confidence - torch_report.lse.confidence) < 1e-4
    np.testing.assert_allclose(ort_report.expert.similarity, torch_report.expert.similarity, atol=1e-5)
    np.testing.assert_allclose(ort_report.visual_quality.per_frame, torch_report.visual_quality.per_frame, atol=1e-5)
    assert ort_report.expert.av_offset == torch_report.expert.av_offset
