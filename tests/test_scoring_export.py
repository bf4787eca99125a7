"""ONNX export of the scoring towers, and ``score --backend onnxruntime`` against torch."""

from __future__ import annotations

import numpy as np
import pytest

from wav2lip_trt.samples import float_to_int16, speechlike_audio, talking_face_frames, write_video, write_wav
from wav2lip_trt.scoring.export import TOWERS, export_scoring_onnx
from wav2lip_trt.random_weights import save_wav2lip_checkpoint
from wav2lip_trt.scoring.random_weights import random_expert_state_dict, write_random_scoring_checkpoints
from wav2lip_trt.scoring.score import ScoreOptions, score_video

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pytest.importorskip("python_speech_features")


def test_towers_cover_every_scoring_network():
    assert set(TOWERS) == {"expert_audio", "expert_face", "syncnet_lip", "syncnet_audio", "disc_qual"}
    assert {t.network for t in TOWERS.values()} == {"expert", "syncnet", "disc"}


def test_export_is_reproducible_and_named(tmp_path):
    import onnx

    expert = save_wav2lip_checkpoint(tmp_path / "lipsync_expert.pth", random_expert_state_dict(0))
    a = export_scoring_onnx("expert_audio", expert, tmp_path / "a.onnx")
    b = export_scoring_onnx("expert_audio", expert, tmp_path / "b.onnx")
    assert a.sha256 == b.sha256 and a.path.read_bytes() == b.path.read_bytes()
    graph = onnx.load(str(a.path)).graph
    assert [i.name for i in graph.input] == ["mel"] and [o.name for o in graph.output] == ["audio_embedding"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    with pytest.raises(ValueError, match="unknown scoring tower"):
        export_scoring_onnx("nope", expert, tmp_path / "c.onnx")


def test_onnxruntime_backend_matches_torch(tmp_path):
    expert, syncnet, disc = write_random_scoring_checkpoints(tmp_path / "ck", seed=4)
    wav = write_wav(tmp_path / "a.wav", float_to_int16(speechlike_audio(0.72, seed=2)), 16000)
    video = write_video(tmp_path / "crop.mp4", talking_face_frames(18, 224, 224, seed=2), 25.0, audio=wav)
    common = dict(video=video, syncnet_checkpoint=syncnet, expert_checkpoint=expert, disc_checkpoint=disc,
                  crops=True, device="cpu")
    torch_report = score_video(ScoreOptions(**common)).clips[0]
    ort_report = score_video(ScoreOptions(backend="onnxruntime", **common)).clips[0]
    assert ort_report.lse.av_offset == torch_report.lse.av_offset
    assert abs(ort_report.lse.min_dist - torch_report.lse.min_dist) < 1e-4
    assert abs(ort_report.lse.confidence - torch_report.lse.confidence) < 1e-4
    np.testing.assert_allclose(ort_report.expert.similarity, torch_report.expert.similarity, atol=1e-5)
    np.testing.assert_allclose(ort_report.visual_quality.per_frame, torch_report.visual_quality.per_frame, atol=1e-5)
    assert ort_report.expert.av_offset == torch_report.expert.av_offset
