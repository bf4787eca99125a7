"""A video larger than the S3FD engine's profile is detected at a size that fits, or refused before models load.

The engine is a real one, built here on the CPU with TensorRT-RTX (as tests/test_build_engines.py
does) with a small profile, so its manifest is what build-engines writes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from click.testing import CliRunner

from wav2lip_trt.build_engines import BuildOptions, build_engines, load_tensorrt
from wav2lip_trt.detection.engine_fit import fit_detect_size, largest_fitting_size, s3fd_engine_limit
from wav2lip_trt.errors import InputError, MissingDependencyError
from wav2lip_trt.options import InferenceOptions
from wav2lip_trt.session import prepare_job

ROWS, COLUMNS = 96, 128  # the engine's largest frame; the talking clip is 160x128


@pytest.fixture(scope="module")
def engines(checkpoints: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        load_tensorrt("auto")
    except MissingDependencyError as exc:
        pytest.skip(str(exc))
    out = tmp_path_factory.mktemp("engines")
    build_engines(BuildOptions(s3fd_checkpoint=checkpoints[1], out=out, precision="fp16", s3fd_batch=(1, 1, 2),
                               s3fd_opt_size=(64, 64), s3fd_max_size=(ROWS, COLUMNS)), show_progress=False)
    return out


def options(checkpoints, talking_clip, engines: Path, tmp_path: Path, **extra) -> InferenceOptions:
    face, audio = talking_clip
    return InferenceOptions(checkpoint_path=checkpoints[0], s3fd_checkpoint=checkpoints[1], face=face, audio=audio,
                            outfile=tmp_path / "out.mp4", backend="tensorrt", engines_dir=engines, **extra)


def test_the_limit_is_read_from_the_engine_manifest(engines: Path) -> None:
    engine, rows, columns = s3fd_engine_limit(engines, "fp16")
    assert (engine.name, rows, columns) == ("s3fd.fp16.engine", ROWS, COLUMNS)
    assert s3fd_engine_limit(engines, "fp32") is None  # not built: the runner will say so


def test_a_larger_video_is_detected_at_the_largest_size_that_fits(checkpoints, talking_clip, engines, tmp_path,
                                                                   caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="wav2lip_trt.detection.engine_fit"):
        job = prepare_job(options(checkpoints, talking_clip, engines, tmp_path))
    assert job.options.detect_size == 120  # 160x128 -> 120x96, the largest that fits 128x96
    assert "--detect-size 120" in caplog.text and "up to 128x96" in caplog.text


def test_a_detect_size_that_does_not_fit_is_one_error_naming_one_that_does(checkpoints, talking_clip, engines,
                                                                            tmp_path) -> None:
    with pytest.raises(InputError, match=r"--detect-size 150 gives S3FD 150x120 frames, larger than the S3FD engine "
                                         r".*s3fd.fp16.engine takes \(at most 128x96\); use --detect-size 120 or less"):
        prepare_job(options(checkpoints, talking_clip, engines, tmp_path, detect_size=150))
    assert prepare_job(options(checkpoints, talking_clip, engines, tmp_path, detect_size=64)).options.detect_size == 64


def test_the_cli_refuses_before_any_model_loads(checkpoints, talking_clip, engines, tmp_path) -> None:
    """On this CPU-only machine loading the engine would fail for want of a GPU; the size error comes first."""
    from wav2lip_trt.cli import cli

    face, audio = talking_clip
    out = tmp_path / "out.mp4"
    result = CliRunner().invoke(cli, [
        "infer", "--checkpoint_path", str(checkpoints[0]), "--s3fd-checkpoint", str(checkpoints[1]),
        "--face", str(face), "--audio", str(audio), "--outfile", str(out), "--backend", "tensorrt",
        "--engines", str(engines), "--detect-size", "150", "--quiet"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith("Error: --detect-size 150 gives S3FD 150x120 frames")
    assert not out.exists()


def test_other_backends_are_not_limited(checkpoints, talking_clip, engines, tmp_path) -> None:
    face, audio = talking_clip
    torch_run = InferenceOptions(checkpoint_path=checkpoints[0], s3fd_checkpoint=checkpoints[1], face=face, audio=audio,
                                 outfile=tmp_path / "out.mp4", backend="torch", engines_dir=engines)
    assert prepare_job(torch_run).options.detect_size is None
    auto_on_cpu = InferenceOptions(checkpoint_path=checkpoints[0], s3fd_checkpoint=checkpoints[1], face=face, audio=audio,
                                   outfile=tmp_path / "out.mp4", backend="auto", device="cpu", engines_dir=engines)
    assert prepare_job(auto_on_cpu).options.detect_size is None  # auto tries engines only on a GPU


@pytest.mark.parametrize(("width", "height", "rows", "columns", "size"), [
    (3840, 2160, 1920, 1920, 1920),  # 4K -> 1920x1080 with the default profile
    (2160, 3840, 1920, 1920, 1920),  # portrait 4K -> 1080x1920
    (1920, 1080, 1080, 1920, 1920),  # fits as it is
    (4000, 1000, 96, 128, 128),  # the longer side binds
    (1000, 1000, 96, 128, 96),  # the rows bind
    (6000, 100, 96, 128, None),  # any size that fits leaves the shorter side under S3FD's 32 pixels
])
def test_largest_fitting_size(width, height, rows, columns, size) -> None:
    assert largest_fitting_size(width, height, rows, columns) == size


def test_a_video_that_fits_keeps_its_options() -> None:
    assert fit_detect_size(1920, 1080, None, (Path("s3fd.fp16.engine"), 1920, 1920)) is None
    assert fit_detect_size(3840, 2160, 1280, (Path("s3fd.fp16.engine"), 1920, 1920)) == 1280
    with pytest.raises(InputError, match="rebuild it with build-engines --s3fd-max-size 100x6000"):
        fit_detect_size(6000, 100, None, (Path("s3fd.fp16.engine"), 96, 128))
