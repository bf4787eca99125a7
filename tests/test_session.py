"""A session loads the networks once and gives every call the output of a separate run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wav2lip_trt.errors import InputError
from wav2lip_trt.options import InferenceOptions
from wav2lip_trt.samples import float_to_int16, speechlike_audio, talking_face_frames, write_video, write_wav
from wav2lip_trt.session import Session, run_inference


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("session")
    return {
        "face": write_video(d / "face.mp4", talking_face_frames(12, 128, 96, seed=4), 25.0),
        "a": write_wav(d / "a.wav", float_to_int16(speechlike_audio(0.6, seed=1)), 16000),
        "b": write_wav(d / "b.wav", float_to_int16(speechlike_audio(0.9, seed=2)), 16000),
    }


def dumped(folder: Path) -> dict[str, np.ndarray]:
    return {p.stem: np.load(p) for p in folder.glob("*.npy")}


def test_calls_on_one_session_equal_separate_runs(media, checkpoints, tmp_path) -> None:
    with Session(checkpoints[0], checkpoints[1], device="cpu") as session:
        runners = session.runners
        first = session.infer(media["face"], media["a"], tmp_path / "a.mp4", dump_intermediates=tmp_path / "sa",
                              on_missing_face="previous")
        second = session.infer(media["face"], media["b"], tmp_path / "b.mp4", dump_intermediates=tmp_path / "sb",
                               on_missing_face="previous", pads=[0, 20, 0, 0])
        assert session.runners is runners
    load = {r["stage"]: r for r in first.stages}["load"]
    assert load["seconds"] > 0 and "load" not in {r["stage"] for r in second.stages}  # loaded once
    for name, audio, extra in (("a", media["a"], {}), ("b", media["b"], {"pads": (0, 20, 0, 0)})):
        alone = run_inference(InferenceOptions(checkpoint_path=checkpoints[0], s3fd_checkpoint=checkpoints[1],
                                               face=media["face"], audio=audio, outfile=tmp_path / f"{name}1.mp4",
                                               device="cpu", dump_intermediates=tmp_path / f"r{name}",
                                               on_missing_face="previous", **extra))
        assert alone.frames == (first if name == "a" else second).frames
        ours, theirs = dumped(tmp_path / f"s{name}"), dumped(tmp_path / f"r{name}")
        assert set(ours) == set(theirs) >= {"boxes", "pred", "frames"}
        for key in theirs:
            np.testing.assert_array_equal(ours[key], theirs[key])
    assert (tmp_path / "a.mp4").stat().st_size > 0 and (tmp_path / "b.mp4").stat().st_size > 0


def test_model_options_belong_to_the_session(media, checkpoints, tmp_path) -> None:
    with Session(checkpoints[0], None, device="cpu") as session:
        with pytest.raises(InputError, match="backend: chosen when the session is created"):
            session.infer(media["face"], media["a"], tmp_path / "x.mp4", backend="onnxruntime")
        with pytest.raises(InputError, match="unknown option"):
            session.infer(media["face"], media["a"], tmp_path / "x.mp4", pad=(0, 1, 0, 0))
        with pytest.raises(InputError, match="no face detector"):
            session.infer(media["face"], media["a"], tmp_path / "x.mp4")
        result = session.infer(media["face"], media["a"], tmp_path / "box.mp4", box=[10, 80, 20, 110])
        assert result.frames == 12 and (tmp_path / "box.mp4").exists()
    with pytest.raises(InputError, match="file not found"):
        Session(tmp_path / "missing.pth")


def _infer_two_batches(media: dict[str, Path], checkpoints, tmp_path: Path, device: str):
    return run_inference(InferenceOptions(checkpoint_path=checkpoints[0], s3fd_checkpoint=checkpoints[1],
                                          face=media["face"], audio=media["b"], outfile=tmp_path / "rate.mp4",
                                          device=device, box=(10, 80, 20, 100), wav2lip_batch_size=4))


@pytest.mark.gpu
def test_gpu_stages_carry_gpu_time_on_cuda(media, checkpoints, tmp_path) -> None:
    """On CUDA the GPU stages are timed by events on the compute stream; the memory peaks join the resources."""
    result = _infer_two_batches(media, checkpoints, tmp_path, "cuda")
    rows = {row["stage"]: row for row in result.stages}
    assert rows["generate"]["gpu_seconds"] > 0
    assert "gpu_seconds" not in rows["encode"]  # host work: no events
    assert result.rate["steady_fps"] is not None and result.resources["max_memory_reserved"] > 0
