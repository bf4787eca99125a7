"""One face, many audios: an audio's own problem fails its output only; any other problem stops the run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from wav2lip_trt.errors import AudioError, CheckpointError, InputError, OutfileError
from wav2lip_trt.many_audios import run_many
from wav2lip_trt.options import InferenceOptions
from wav2lip_trt.samples import float_to_int16, speechlike_audio, talking_face_frames, write_video, write_wav

BOX = (10, 80, 20, 110)  # y1 y2 x1 x2 inside the 160x128 frames: no detector, no detection


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("many")
    broken = d / "broken.wav"
    broken.write_bytes(b"RIFF....not audio")
    return {
        "dir": d,
        "face": write_video(d / "face.mp4", talking_face_frames(10, 160, 128, seed=3), 25.0),
        "en": write_wav(d / "en.wav", float_to_int16(speechlike_audio(0.4, seed=1)), 16000),
        "de": write_wav(d / "de.wav", float_to_int16(speechlike_audio(0.5, seed=2)), 16000),
        "short": write_wav(d / "short.wav", float_to_int16(speechlike_audio(0.02, seed=3)), 16000),
        "broken": broken,
        "missing": d / "missing.wav",
    }


def options(media, checkpoints, out: Path, **kw) -> InferenceOptions:
    base = dict(checkpoint_path=checkpoints[0], s3fd_checkpoint=checkpoints[1], face=media["face"], audio=media["en"],
                outfile=out / "{audio}.mp4", device="cpu", box=BOX)
    return InferenceOptions(**{**base, **kw})


def test_each_audio_and_output_problem_fails_alone(media, checkpoints, tmp_path) -> None:
    out = tmp_path / "out"
    (out / "taken.mp4").mkdir(parents=True)  # this output's path is a folder
    taken = media["dir"] / "taken.wav"
    taken.write_bytes(media["en"].read_bytes())
    audios = [media["en"], media["missing"], media["broken"], media["short"], taken, media["de"]]
    outcomes = list(run_many(options(media, checkpoints, out), audios))
    assert [o.audio for o in outcomes] == audios
    errors = {o.audio.name: o.error for o in outcomes if o.error is not None}
    assert set(errors) == {"missing.wav", "broken.wav", "short.wav", "taken.wav"}
    assert errors["missing.wav"].startswith("--audio file not found:")
    assert "cannot decode audio from" in errors["broken.wav"] and "broken.wav" in errors["broken.wav"]
    assert "too short" in errors["short.wav"]
    assert "is a folder" in errors["taken.wav"]
    assert all(o.result is not None for o in outcomes if o.error is None)
    assert sorted(p.name for p in out.iterdir()) == ["de.mp4", "en.mp4", "taken.mp4"]
    assert (out / "taken.mp4").is_dir()


def test_the_errors_are_typed_at_their_source(media, checkpoints, tmp_path) -> None:
    with pytest.raises(AudioError, match="--audio file not found"):
        options(media, checkpoints, tmp_path, audio=media["missing"], outfile=tmp_path / "o.mp4").validate()
    (tmp_path / "dir.mp4").mkdir()
    with pytest.raises(OutfileError, match="is a folder"):
        options(media, checkpoints, tmp_path, outfile=tmp_path / "dir.mp4").validate()
    with pytest.raises(InputError, match="--face file not found") as info:  # shared: neither of the two
        options(media, checkpoints, tmp_path, face=tmp_path / "none.mp4", outfile=tmp_path / "o.mp4").validate()
    assert not isinstance(info.value, (AudioError, OutfileError))


def test_a_corrupt_checkpoint_stops_the_run(media, checkpoints, tmp_path) -> None:
    corrupt = tmp_path / "wav2lip.pth"
    corrupt.write_bytes(b"not a checkpoint" * 64)
    outcomes = run_many(options(media, checkpoints, tmp_path / "out", checkpoint_path=corrupt),
                        [media["broken"], media["en"], media["de"]])
    assert next(outcomes).error is not None  # the broken audio fails before any model loads
    with pytest.raises(CheckpointError):
        next(outcomes)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_face_that_vanishes_stops_the_run(media, checkpoints, tmp_path) -> None:
    face = tmp_path / "face.mp4"
    face.write_bytes(media["face"].read_bytes())
    out = tmp_path / "out"
    outcomes = run_many(options(media, checkpoints, out, face=face), [media["en"], media["de"], media["missing"]])
    assert next(outcomes).result is not None
    face.unlink()
    with pytest.raises(InputError, match="--face file not found"):
        next(outcomes)
    assert sorted(p.name for p in out.iterdir()) == ["en.mp4"]


def test_cli_a_missing_first_audio_fails_alone(media, checkpoints, tmp_path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "wav2lip_trt", "infer", "-q", "--checkpoint_path", str(checkpoints[0]),
         "--face", str(media["face"]), "--audio", str(media["missing"]), "--audio", str(media["broken"]),
         "--audio", str(media["en"]), "--outfile", str(out), "--box", *map(str, BOX), "--device", "cpu"],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 2 and "missing.wav" in errors[0] and "broken.wav" in errors[1]
    assert sorted(p.name for p in out.iterdir()) == ["en.mp4"]
