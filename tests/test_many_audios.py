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


def test_cli_an_output_that_is_another_audio_is_refused_before_anything_runs(media, checkpoints, tmp_path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    clash = folder / "clash.wav"
    clash.write_bytes(media["en"].read_bytes())
    dub = folder / "clash_dub.mp4"  # an audio (a video's audio track) that the template's first output would replace
    dub.write_bytes(media["face"].read_bytes())
    before = dub.read_bytes()
    proc = subprocess.run(
        [sys.executable, "-m", "wav2lip_trt", "infer", "-q", "--checkpoint_path", str(checkpoints[0]),
         "--face", str(media["face"]), "--audio", str(clash), "--audio", str(dub),
         "--outfile", str(folder / "{audio}_dub.mp4"), "--box", *map(str, BOX), "--device", "cpu", "--no-cache"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"Error: --outfile {dub} (for --audio {clash}) is the same file as --audio {dub}; inputs are never overwritten"]
    assert dub.read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == ["clash.wav", "clash_dub.mp4"]


@pytest.mark.parametrize("outfile, extra", [
    ("out/{audio}.mp4", {"save_frames": "frames"}),  # every run would write the same frames
    ("out/{audio}.mp4", {"dump_intermediates": "out/en.mp4"}),  # the first run's output
    ("out/{audio}.mp4", {"boxes": "out/de.mp4"}),  # an input of every run
])
def test_outputs_of_all_runs_are_checked_together(media, checkpoints, tmp_path, monkeypatch, outfile, extra) -> None:
    monkeypatch.chdir(tmp_path)
    Path("out").mkdir()
    Path("out/de.mp4").write_bytes(b"boxes")
    opts = options(media, checkpoints, tmp_path, outfile=Path(outfile), box=(-1, -1, -1, -1),
                   **{k: Path(v) for k, v in extra.items()})
    with pytest.raises(InputError, match="is the same file as") as info:
        next(run_many(opts, [media["en"], media["de"]]))
    assert not isinstance(info.value, (AudioError, OutfileError))  # the whole command, before any run
    assert sorted(p.name for p in Path("out").iterdir()) == ["de.mp4"] and not Path("frames").exists()


def test_audio_in_save_frames_gives_each_run_its_folder(media, checkpoints, tmp_path) -> None:
    from wav2lip_trt.many_audios import plan_runs

    runs = plan_runs(options(media, checkpoints, tmp_path / "out", save_frames=tmp_path / "frames/{audio}"),
                     [media["en"], media["de"]])
    assert [run.save_frames for run in runs] == [tmp_path / "frames/en", tmp_path / "frames/de"]
    assert [run.outfile for run in runs] == [tmp_path / "out/en.mp4", tmp_path / "out/de.mp4"]


@pytest.mark.parametrize("name, template", [
    ("...wav", "out/{audio}/x.mp4"),  # stem '..': out/../x.mp4
    ("..wav", "out/.{audio}/x.mp4"),  # stem '.': the component becomes '..'
    ("..wav", "out/{audio}/x.mp4"),  # stem '.': out/./x.mp4, no name of its own
])
def test_an_audio_name_never_leads_outside_the_template_folder(media, checkpoints, tmp_path, name, template) -> None:
    audio = tmp_path / "audios" / name
    audio.parent.mkdir()
    audio.write_bytes(media["en"].read_bytes())
    work = tmp_path / "work"
    work.mkdir()
    opts = options(media, checkpoints, work, outfile=work / template)
    with pytest.raises(InputError, match=r"--audio .*: its name '\.\.?' in --outfile .* would make the path component"):
        next(run_many(opts, [audio, media["de"]]))
    assert list(work.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["audios", "work"]
    from wav2lip_trt.many_audios import plan_runs

    inside = plan_runs(options(media, checkpoints, work, outfile=work / "out/{audio}.mp4"), [audio, media["de"]])
    assert inside[0].outfile == work / "out" / f"{audio.stem}.mp4"  # part of a name: '...mp4' is a plain file name
