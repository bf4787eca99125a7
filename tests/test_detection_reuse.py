"""Detect once, reuse everywhere: the cache in real runs, several audios, detect + --boxes, sparse and scaled detection."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from wav2lip_trt.detection.cache import DetectionCache
from wav2lip_trt.detection.command import DetectOptions, detect_face
from wav2lip_trt.detection.sparse import interpolate_boxes
from wav2lip_trt.errors import InputError
from wav2lip_trt.options import InferenceOptions
from wav2lip_trt.samples import float_to_int16, speechlike_audio, talking_face_frames, write_video, write_wav
from wav2lip_trt.session import run_inference


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("reuse")
    return {
        "dir": d,
        "face": write_video(d / "face.mp4", talking_face_frames(20, 160, 128, seed=2), 25.0),
        "en": write_wav(d / "en.wav", float_to_int16(speechlike_audio(0.8, seed=1)), 16000),
        "de": write_wav(d / "de.wav", float_to_int16(speechlike_audio(1.0, seed=2)), 16000),
    }


def options(media, checkpoints, out: Path, **kw) -> InferenceOptions:
    base = dict(checkpoint_path=checkpoints[0], s3fd_checkpoint=checkpoints[1], face=media["face"], audio=media["en"],
                outfile=out / "out.mp4", device="cpu", on_missing_face="previous", dump_intermediates=out / "dump",
                cache_dir=out.parent / "cache")
    return InferenceOptions(**{**base, **kw})


def dumped(folder: Path) -> dict[str, np.ndarray]:
    return {p.stem: np.load(p) for p in folder.glob("*.npy")}


def stage(result, name: str) -> dict | None:
    return next((r for r in result.stages if r["stage"] == name), None)


def test_a_hit_skips_s3fd_and_gives_the_same_output(media, checkpoints, tmp_path) -> None:
    plain = run_inference(options(media, checkpoints, tmp_path / "plain", no_cache=True))
    first = run_inference(options(media, checkpoints, tmp_path / "first"))
    second = run_inference(options(media, checkpoints, tmp_path / "second", audio=media["de"]))
    again = run_inference(options(media, checkpoints, tmp_path / "again"))
    assert (plain.detection, first.detection, again.detection) == ("detected", "cache miss", "cache hit")
    assert second.detection == "cache partial"  # a longer audio needs frames the first run did not detect
    assert stage(again, "detect") is None and stage(first, "detect")["items"] == first.frames
    # the hit decodes only what generation shows: the frames once, not twice
    assert stage(again, "decode")["items"] == stage(first, "decode")["items"] // 2
    reference = dumped(tmp_path / "plain" / "dump")
    for run in ("first", "again"):
        ours = dumped(tmp_path / run / "dump")
        for name in ("det_boxes", "boxes", "pred", "frames"):
            np.testing.assert_array_equal(ours[name], reference[name])


def test_what_changes_the_key_misses_and_what_does_not_hits(media, checkpoints, tmp_path) -> None:
    run_inference(options(media, checkpoints, tmp_path / "a"))
    assert run_inference(options(media, checkpoints, tmp_path / "b", pads=(0, 20, 0, 0), nosmooth=True)).detection == "cache hit"
    assert run_inference(options(media, checkpoints, tmp_path / "c", face_det_batch_size=8)).detection == "cache miss"
    assert run_inference(options(media, checkpoints, tmp_path / "d", crop=(0, 120, 0, -1))).detection == "cache miss"
    copy = tmp_path / "renamed.mp4"
    copy.write_bytes(media["face"].read_bytes())  # same bytes, another name: the same entry
    assert run_inference(options(media, checkpoints, tmp_path / "e", face=copy)).detection == "cache hit"
    assert DetectionCache(tmp_path / "cache").info().entries == 3


def test_a_corrupt_entry_is_ignored_and_rewritten(media, checkpoints, tmp_path, caplog) -> None:
    run_inference(options(media, checkpoints, tmp_path / "a"))
    entry = next((tmp_path / "cache" / "detections").glob("*.npz"))
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    caplog.set_level("WARNING")
    again = run_inference(options(media, checkpoints, tmp_path / "b"))
    assert again.detection == "cache miss" and entry.name in caplog.text
    np.testing.assert_array_equal(dumped(tmp_path / "b" / "dump")["frames"], dumped(tmp_path / "a" / "dump")["frames"])
    assert run_inference(options(media, checkpoints, tmp_path / "c")).detection == "cache hit"


def run_cli(*args: str, env_cache: Path) -> subprocess.CompletedProcess[str]:
    import os

    env = {**os.environ, "XDG_CACHE_HOME": str(env_cache)}
    return subprocess.run([sys.executable, "-m", "wav2lip_trt", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def test_several_audios_equal_separate_runs_and_a_bad_one_fails_alone(media, checkpoints, tmp_path) -> None:
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF....not audio")
    out = tmp_path / "out"
    proc = run_cli("infer", "-q", "--checkpoint_path", str(checkpoints[0]), "--s3fd-checkpoint", str(checkpoints[1]),
                   "--face", str(media["face"]), "--audio", str(media["en"]), "--audio", str(bad), "--audio",
                   str(media["de"]), "--outfile", f"{out}/{{audio}}.mp4", "--device", "cpu", "--on-missing-face",
                   "previous", "--json", str(tmp_path / "runs.json"), env_cache=tmp_path / "cache")
    assert proc.returncode == 1
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and "broken.wav" in errors[0] and "Traceback" not in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["de.mp4", "en.mp4"]  # nothing half-written for the bad one
    runs = json.loads((tmp_path / "runs.json").read_text())
    assert runs["failed"] == 1 and [r.get("detection") for r in runs["runs"]] == ["cache miss", None, "cache partial"]
    for name in ("en", "de"):
        alone = tmp_path / f"alone_{name}.mp4"
        run_inference(options(media, checkpoints, tmp_path / name, audio=media[name], outfile=alone, no_cache=True,
                              dump_intermediates=None))
        assert _frames(alone) == _frames(out / f"{name}.mp4")


def _frames(video: Path) -> list[bytes]:
    import cv2

    cap = cv2.VideoCapture(str(video))
    frames = []
    while (ok := cap.read())[0]:
        frames.append(ok[1].tobytes())
    cap.release()
    return frames


def test_several_audios_need_a_folder_or_a_template(media, checkpoints, tmp_path) -> None:
    proc = run_cli("infer", "--checkpoint_path", str(checkpoints[0]), "--s3fd-checkpoint", str(checkpoints[1]),
                   "--face", str(media["face"]), "--audio", str(media["en"]), "--audio", str(media["de"]),
                   "--outfile", str(tmp_path / "one.mp4"), "--device", "cpu", env_cache=tmp_path / "cache")
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith("Error: --outfile")
    assert "{audio}" in proc.stderr


def test_detect_then_boxes_file_gives_the_detected_run(media, checkpoints, tmp_path) -> None:
    boxes = tmp_path / "boxes.json"
    proc = run_cli("detect", "--face", str(media["face"]), "--s3fd-checkpoint", str(checkpoints[1]), "--device", "cpu",
                   "--json", str(boxes), "--no-cache", env_cache=tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(boxes.read_text())
    assert doc["frames"] == 20 and len(doc["boxes"]) == 20 and (doc["width"], doc["height"]) == (160, 128)
    from_file = run_inference(options(media, checkpoints, tmp_path / "file", boxes=boxes, no_cache=True))
    detected = run_inference(options(media, checkpoints, tmp_path / "s3fd", no_cache=True))
    assert from_file.detection == "boxes file"
    ours, theirs = dumped(tmp_path / "file" / "dump"), dumped(tmp_path / "s3fd" / "dump")
    for name in ("boxes", "frames"):
        np.testing.assert_array_equal(ours[name], theirs[name])


def test_detect_fills_the_cache_infer_reads(media, checkpoints, tmp_path) -> None:
    result = detect_face(DetectOptions(face=media["face"], s3fd_checkpoint=checkpoints[1], device="cpu",
                                       cache_dir=tmp_path / "cache"))
    assert len(result.boxes) == 20 and result.origin == "cache miss"
    assert run_inference(options(media, checkpoints, tmp_path / "run", audio=media["de"])).detection == "cache hit"


def test_detect_after_an_infer_that_showed_every_frame_is_a_hit(media, checkpoints, tmp_path) -> None:
    """Issue 17, item 11: this said "cache partial; S3FD ran on 0"."""
    exact = write_wav(tmp_path / "exact.wav", float_to_int16(speechlike_audio(0.9, seed=1)), 16000)
    first = run_inference(options(media, checkpoints, tmp_path / "run", audio=exact, dump_intermediates=None))
    assert first.frames == 20 and first.detection == "cache miss"  # every frame, but not past the last one
    again = detect_face(DetectOptions(face=media["face"], s3fd_checkpoint=checkpoints[1], device="cpu",
                                      cache_dir=tmp_path / "cache"))
    assert (again.origin, again.detected, len(again.boxes)) == ("cache hit", 0, 20)


def test_boxes_count_of_a_video_without_a_frame_count_is_counted(media, checkpoints, tmp_path) -> None:
    """A raw H.264 stream has no container frame count: the frames are counted, so both ways are refused."""
    import cv2
    from media import run_ffmpeg

    stream = tmp_path / "face.h264"
    run_ffmpeg("-i", media["face"], "-c:v", "libx264", stream)
    capture = cv2.VideoCapture(str(stream))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) != 20  # what OpenCV says is no count
    capture.release()
    boxes = tmp_path / "boxes.json"
    for count in (19, 20, 21):
        boxes.write_text(json.dumps([[10, 10, 60, 70]] * count))
        opts = options(media, checkpoints, tmp_path / "o", face=stream, boxes=boxes)
        if count == 20:
            assert opts.check_face_source().info.kind == "video"
        else:
            with pytest.raises(InputError, match=f"has {count} boxes, the face input has 20 frames"):
                opts.check_face_source()


@pytest.mark.parametrize(("boxes", "message"), [
    ([[10, 10, 50, 50]] * 5, "has 5 boxes, the face input has 8 frames"),
    ([[10, 10, 50]] * 8, "4 integers"),
    ([[50, 10, 10, 50]] * 8, "x2"),
    ([[500, 400, 600, 500]] * 8, "outside"),
])
def test_boxes_file_is_checked_against_the_face_input(checkpoints, tmp_path, boxes, message) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    import cv2

    for i, frame in enumerate(talking_face_frames(8, 160, 128, seed=1)):
        cv2.imwrite(str(folder / f"f{i}.png"), frame)
    audio = write_wav(tmp_path / "a.wav", float_to_int16(speechlike_audio(0.4)), 16000)
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps(boxes))
    opts = InferenceOptions(checkpoint_path=checkpoints[0], face=folder, audio=audio, outfile=tmp_path / "o.mp4",
                            boxes=path, device="cpu")
    with pytest.raises(InputError, match=message):
        run_inference(opts)
    assert not (tmp_path / "o.mp4").exists()


def test_detect_every_interpolates_raw_boxes_and_one_is_today(media, checkpoints, tmp_path) -> None:
    full = run_inference(options(media, checkpoints, tmp_path / "full", no_cache=True))
    every1 = run_inference(options(media, checkpoints, tmp_path / "k1", no_cache=True, detect_every=1))
    np.testing.assert_array_equal(dumped(tmp_path / "k1" / "dump")["frames"], dumped(tmp_path / "full" / "dump")["frames"])
    assert full.frames == every1.frames
    sparse = run_inference(options(media, checkpoints, tmp_path / "k4", detect_every=4, audio=media["de"]))
    raw = dumped(tmp_path / "k4" / "dump")["det_boxes"]
    assert sparse.detection == "cache miss" and stage(sparse, "detect")["items"] == 6  # frames 0 4 8 12 16 19
    detected = {i: tuple(int(v) for v in raw[i]) for i in (0, 4, 8, 12, 16, 19)}
    expected = interpolate_boxes(20, {i: (None if b[0] == -1 else b) for i, b in detected.items()})
    got = [None if r[0] == -1 else tuple(int(v) for v in r) for r in raw]
    assert got == expected
    x1 = (raw[0, 0] * 2 + raw[4, 0] * 2 + 2) // 4  # frame 2, half way: exact integer interpolation
    if raw[0, 0] != -1 and raw[4, 0] != -1:
        assert raw[2, 0] == x1


def test_detect_size_maps_boxes_back_to_the_full_frame(media, checkpoints, tmp_path) -> None:
    same = run_inference(options(media, checkpoints, tmp_path / "same", no_cache=True, detect_size=160))
    full = run_inference(options(media, checkpoints, tmp_path / "full", no_cache=True))
    np.testing.assert_array_equal(dumped(tmp_path / "same" / "dump")["det_boxes"],
                                  dumped(tmp_path / "full" / "dump")["det_boxes"])  # already that small: unchanged
    assert same.frames == full.frames
    small = run_inference(options(media, checkpoints, tmp_path / "small", no_cache=True, detect_size=80))
    raw = dumped(tmp_path / "small" / "dump")["det_boxes"]
    found = raw[raw[:, 0] != -1]
    assert small.frames == full.frames and len(found)
    # boxes from 80x64 frames mapped back by the factor 2: even numbers, x2/y2 rounded outward
    assert (found % 2 == 0).all()


def test_detection_options_are_validated_up_front(media, checkpoints, tmp_path) -> None:
    for kw, message in (({"detect_every": 0}, "--detect-every"), ({"detect_size": 16}, "--detect-size"),
                        ({"boxes": tmp_path / "none.json"}, "--boxes file not found")):
        with pytest.raises(InputError, match=message):
            replace(options(media, checkpoints, tmp_path / "x"), **kw).validate()
