"""Engine builds on CPU with TensorRT-RTX: real FP16/FP32 engines, manifests, staleness and refusals."""

from __future__ import annotations

import json
import shlex
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from wav2lip_trt.build_engines import (
    FLAVOR_CHOICES, BuildOptions, artifact_paths, build_engines, check_engine, inspect_onnx, load_tensorrt,
    read_manifest,
)
from wav2lip_trt.build_engines import builder
from wav2lip_trt.build_engines.builder import BuildSettings, build_engine
from wav2lip_trt.build_engines.command import DEFAULTS, build_engines_command, options_from_params
from wav2lip_trt.build_engines.manifest import stale_reason
from wav2lip_trt.files import sha256_file
from wav2lip_trt.build_engines.options import parse_compute_capabilities, parse_size
from wav2lip_trt.errors import EngineError, InputError, MissingDependencyError
from wav2lip_trt.runners.base import S3FD_INPUTS, S3FD_OUTPUTS, WAV2LIP_INPUTS, WAV2LIP_OUTPUTS


def _tensorrt() -> builder.TensorRT:
    try:
        return load_tensorrt("auto")
    except MissingDependencyError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def rt() -> builder.TensorRT:
    return _tensorrt()


@pytest.fixture(scope="module")
def built(checkpoints: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory, rt: builder.TensorRT):
    """Both networks at both precisions, built once into one folder."""
    wav2lip, s3fd = checkpoints
    out = tmp_path_factory.mktemp("engines")
    reports = {}
    for precision in ("fp16", "fp32"):
        options = BuildOptions(checkpoint_path=wav2lip, s3fd_checkpoint=s3fd, out=out, precision=precision)
        reports[precision] = build_engines(options, show_progress=False)
    return out, reports


def test_builds_real_engines_for_both_models_and_precisions(built, rt: builder.TensorRT) -> None:
    out, reports = built
    for precision, report in reports.items():
        assert report.flavor == rt.flavor.name and report.tensorrt_version == rt.version
        assert [r.model for r in report.results] == ["s3fd", "wav2lip"]
        for r in report.results:
            assert (r.onnx_status, r.engine_status, r.reason) == ("exported", "built", "not built yet")
            assert r.engine == artifact_paths(out, r.model, precision).engine
            assert r.engine.stat().st_size == r.engine_bytes > 10_000_000  # the weights are in it
    fp16, fp32 = (artifact_paths(out, "wav2lip", p).engine.stat().st_size for p in ("fp16", "fp32"))
    assert fp16 < 0.7 * fp32  # FP16 weights


def test_manifests_are_complete(built, checkpoints: tuple[Path, Path], rt: builder.TensorRT) -> None:
    from wav2lip_trt.checkpoints import file_sha256

    out, _ = built
    sources = {"wav2lip": checkpoints[0], "s3fd": checkpoints[1]}
    names = {"s3fd": (S3FD_INPUTS, S3FD_OUTPUTS), "wav2lip": (WAV2LIP_INPUTS, WAV2LIP_OUTPUTS)}
    for model in ("s3fd", "wav2lip"):
        for precision in ("fp16", "fp32"):
            paths = artifact_paths(out, model, precision)
            m = read_manifest(paths.engine_manifest)
            assert m is not None and (m["model"], m["precision"], m["kind"]) == (model, precision, "engine")
            assert m["checkpoint"]["sha256"] == file_sha256(sources[model])
            assert m["onnx"]["sha256"] == sha256_file(paths.onnx) == read_manifest(paths.onnx_manifest)["file"]["sha256"]
            assert m["file"] == {"name": paths.engine.name, "sha256": sha256_file(paths.engine),
                                 "bytes": paths.engine.stat().st_size}
            inputs, outputs = names[model]
            assert [t["name"] for t in m["inputs"]] == list(inputs)
            assert [t["name"] for t in m["outputs"]] == list(outputs)
            assert {t["dtype"] for t in m["inputs"] + m["outputs"]} == {"float32"}
            assert all(t["profile"]["min"] and t["profile"]["opt"] and t["profile"]["max"] for t in m["inputs"])
            assert m["tensorrt"] == {"flavor": rt.flavor.name, "version": rt.version}
            assert m["target"]["compute_capabilities"] and m["target"]["requested"] == ["portable"]
            build = m["build"]
            assert build["host"]["hostname"] and build["host"]["python"] and build["seconds"] > 0 and build["finished"]
            assert "wav2lip-trt build-engines" in build["command"]
            assert m["network"]["layers"] > 50
    s3fd = read_manifest(artifact_paths(out, "s3fd", "fp16").engine_manifest)
    assert s3fd["inputs"][0]["profile"] == {"min": [1, 3, 64, 64], "opt": [4, 3, 720, 1280], "max": [8, 3, 1920, 1920]}
    assert s3fd["inputs"][0]["shape"] == [-1, 3, -1, -1]
    assert s3fd["outputs"][0]["shape"] == [-1, 2, -1, -1]
    wav2lip = read_manifest(artifact_paths(out, "wav2lip", "fp16").engine_manifest)
    assert wav2lip["inputs"][1]["profile"]["max"] == [128, 6, 96, 96]
    assert wav2lip["outputs"][0]["shape"] == [-1, 3, 96, 96]


def test_parsed_fp16_network_is_half_except_the_l2norm(built, rt: builder.TensorRT) -> None:
    out, _ = built
    s3fd = inspect_onnx(rt, artifact_paths(out, "s3fd", "fp16").onnx)
    convs = [n for n, kind in s3fd.layer_kinds.items() if kind == "CONVOLUTION"]
    assert convs and all(s3fd.layer_dtypes[n] == ("float16",) for n in convs)
    for scope in ("conv3_3_norm", "conv4_3_norm", "conv5_3_norm"):
        for op in ("Pow", "ReduceSum", "Sqrt", "Add", "Div"):
            assert s3fd.layer_dtypes[f"/{scope}/{op}"] == ("float32",), (scope, op)
    assert all(name.startswith(("/conv3_3_norm/", "/conv4_3_norm/", "/conv5_3_norm/", "/Max"))
               for name in s3fd.compute_layers("float32"))
    wav2lip = inspect_onnx(rt, artifact_paths(out, "wav2lip", "fp16").onnx)
    assert wav2lip.compute_layers("float32") == []
    fp32 = inspect_onnx(rt, artifact_paths(out, "wav2lip", "fp32").onnx)
    assert "float16" not in fp32.tensor_dtypes


def test_second_run_is_skipped_as_up_to_date(built, checkpoints: tuple[Path, Path]) -> None:
    out, _ = built
    engine = artifact_paths(out, "s3fd", "fp16").engine
    before = engine.stat().st_mtime_ns
    report = build_engines(BuildOptions(checkpoint_path=checkpoints[0], s3fd_checkpoint=checkpoints[1], out=out),
                           show_progress=False)
    assert all(r.skipped and r.reason is None for r in report.results)
    assert engine.stat().st_mtime_ns == before


def test_changed_checkpoint_is_stale_and_force_rebuilds(
    built, checkpoints: tuple[Path, Path], tmp_path: Path, rt: builder.TensorRT
) -> None:
    from wav2lip_trt.random_weights import random_s3fd_state_dict, save_s3fd_checkpoint

    out, _ = built
    checkpoint = tmp_path / "s3fd.pth"
    checkpoint.write_bytes(checkpoints[1].read_bytes())
    options = BuildOptions(s3fd_checkpoint=checkpoint, out=out, precision="fp32")
    assert build_engines(options, show_progress=False).results[0].skipped  # same bytes, another path

    save_s3fd_checkpoint(checkpoint, random_s3fd_state_dict(seed=1))
    engine = artifact_paths(out, "s3fd", "fp32").engine
    with pytest.raises(EngineError, match="another checkpoint"):
        check_engine(engine, checkpoint_path=checkpoint, flavor=rt.flavor.name, version=rt.version,
                     compute_capability=(8, 6))
    (result,) = build_engines(options, show_progress=False).results
    assert (result.onnx_status, result.engine_status, result.reason) == ("exported", "built", "the checkpoint changed")
    check_engine(engine, checkpoint_path=checkpoint, flavor=rt.flavor.name, version=rt.version,
                 compute_capability=(8, 6))

    before = engine.stat().st_mtime_ns
    (forced,) = build_engines(replace(options, force=True), show_progress=False).results
    assert (forced.onnx_status, forced.engine_status, forced.reason) == ("exported", "built", "--force")
    assert engine.stat().st_mtime_ns != before

    engine.write_bytes(engine.read_bytes()[:-1000])  # e.g. an interrupted copy
    with pytest.raises(EngineError, match="does not match its manifest"):
        check_engine(engine, checkpoint_path=checkpoint, flavor=rt.flavor.name, version=rt.version,
                     compute_capability=(8, 6))
    (repaired,) = build_engines(options, show_progress=False).results
    assert repaired.reason == "the file does not match its manifest"


def test_check_engine_refuses_with_the_rebuild_command(built, checkpoints: tuple[Path, Path], rt) -> None:
    out, _ = built
    engine = artifact_paths(out, "wav2lip", "fp16").engine
    wav2lip = checkpoints[0]
    ok = dict(checkpoint_path=wav2lip, flavor=rt.flavor.name, version=rt.version)
    targets = read_manifest(artifact_paths(out, "wav2lip", "fp16").engine_manifest)["target"]["compute_capabilities"]
    assert check_engine(engine, compute_capability=targets[0], **ok)["model"] == "wav2lip"

    def refusal(**kwargs) -> str:
        kwargs = {**ok, "compute_capability": targets[0], **kwargs}
        with pytest.raises(EngineError) as info:
            check_engine(engine, **kwargs)
        message = str(info.value)
        assert "\n" not in message
        command = message.split("with: ", 1)[1]
        assert command.startswith("wav2lip-trt build-engines --checkpoint_path ")
        assert "--s3fd-checkpoint" not in command
        ctx = build_engines_command.make_context("build-engines", shlex.split(command)[2:])
        rebuild = options_from_params(ctx.params)
        assert (rebuild.checkpoint_path, rebuild.out, rebuild.precision) == (kwargs["checkpoint_path"], out, "fp16")
        return message

    assert "another checkpoint" in refusal(checkpoint_path=checkpoints[1])
    assert "this runtime is" in refusal(version="0.0.1")
    assert "--flavor tensorrt" in refusal(flavor="tensorrt", version="10.13.0")
    if rt.flavor.chooses_targets:
        assert "Hopper" in refusal(compute_capability=(9, 0)) and "--flavor tensorrt" in refusal(compute_capability="9.0")
        assert "--compute-capabilities 7.5" in refusal(compute_capability=(7, 5))
    with pytest.raises(EngineError, match="engine not found.*build-engines"):
        check_engine(out / "missing" / "wav2lip.fp16.engine", compute_capability=(8, 6), **ok)


def test_compute_capabilities_are_targets(built, rt: builder.TensorRT, tmp_path: Path) -> None:
    if not rt.flavor.chooses_targets:
        pytest.skip(f"{rt.flavor.label} builds for its own GPU")
    out, _ = built
    onnx = artifact_paths(out, "s3fd", "fp16").onnx
    profile = BuildOptions(s3fd_batch=(1, 1, 2), s3fd_opt_size=(64, 64), s3fd_max_size=(128, 128)).profile("s3fd")
    engine = build_engine(rt, onnx, tmp_path / "s3fd.engine", profile,
                          BuildSettings(compute_capabilities=("7.5", "12.0")), show_progress=False)
    assert engine.bytes > 10_000_000
    with pytest.raises(EngineError, match="cannot target compute capability 9.0 .*Hopper.*--flavor tensorrt"):
        build_engine(rt, onnx, tmp_path / "h100.engine", profile, BuildSettings(compute_capabilities=("9.0",)),
                     show_progress=False)
    assert not (tmp_path / "h100.engine").exists()


def test_build_stops_when_the_parser_breaks_the_fp16_policy(built, rt: builder.TensorRT, tmp_path: Path) -> None:
    out, _ = built
    onnx = artifact_paths(out, "s3fd", "fp16").onnx
    with pytest.raises(EngineError, match="layer /conv3_3/Conv must compute in FP32 but .* float16"):
        build_engine(rt, onnx, tmp_path / "x.engine", BuildOptions().profile("s3fd"),
                     float32_layers=["/conv3_3_norm/ReduceSum", "/conv3_3/Conv"], show_progress=False)
    assert not (tmp_path / "x.engine").exists()


@pytest.mark.filterwarnings("ignore:.*Timing cache operations are no-ops:DeprecationWarning")
def test_timing_cache_is_persisted_and_reused(built, rt: builder.TensorRT, tmp_path: Path) -> None:
    """Full TensorRT's path, exercised with whichever flavour is installed (TensorRT-RTX's is a no-op)."""
    out, _ = built
    onnx = artifact_paths(out, "wav2lip", "fp32").onnx
    profile = BuildOptions(wav2lip_batch=(1, 2, 4)).profile("wav2lip")
    with_cache = builder.TensorRT(replace(rt.flavor, timing_cache=True), rt.module)
    cache = tmp_path / "timing.cache"
    for _ in range(2):
        build_engine(with_cache, onnx, tmp_path / "w.engine", profile, BuildSettings(timing_cache=cache),
                     show_progress=False)
        assert cache.stat().st_size > 0


def test_parser_errors_are_one_line(rt: builder.TensorRT, tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx model")
    with pytest.raises(EngineError, match="ONNX parser failed") as info:
        build_engine(rt, bad, tmp_path / "bad.engine", {}, show_progress=False)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "bad.engine").exists()


def test_missing_tensorrt_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    real = builder.importlib.import_module

    def no_tensorrt(name: str):
        if name.startswith("tensorrt"):
            raise ImportError(name)
        return real(name)

    monkeypatch.setattr(builder.importlib, "import_module", no_tensorrt)
    with pytest.raises(MissingDependencyError, match=r"pip install 'wav2lip-trt\[rtx\]'"):
        load_tensorrt("auto")
    with pytest.raises(MissingDependencyError, match=r"pip install 'wav2lip-trt\[rtx\]'"):
        load_tensorrt("tensorrt-rtx")
    with pytest.raises(MissingDependencyError, match="tensorrt"):
        load_tensorrt("tensorrt")


def test_cli_builds_skips_and_reports(built, checkpoints: tuple[Path, Path]) -> None:
    out, _ = built
    runner = CliRunner()
    result = runner.invoke(build_engines_command, [
        "--checkpoint-path", str(checkpoints[0]), "--s3fd_checkpoint", str(checkpoints[1]), "--out", str(out),
        "--json", "-", "--quiet",
    ])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [(r["model"], r["engine_status"]) for r in report["results"]] == [("s3fd", "up to date"),
                                                                              ("wav2lip", "up to date")]
    result = runner.invoke(build_engines_command, ["--checkpoint_path", str(checkpoints[0]), "--out", str(out)])
    assert result.exit_code == 0
    assert "wav2lip fp16: " in result.stderr and "up to date" in result.stderr


@pytest.mark.parametrize("args, message", [
    ([], "give at least one checkpoint: --checkpoint_path"),
    (["--checkpoint_path", "missing.pth"], "--checkpoint_path file not found: missing.pth"),
    (["--s3fd-checkpoint", "{s3fd}", "--s3fd-min-size", "16x16"], "min <= opt <= max"),
    (["--s3fd-checkpoint", "{s3fd}", "--s3fd-max-size", "big"], "HEIGHTxWIDTH"),
    (["--s3fd-checkpoint", "{s3fd}", "--s3fd-opt-batch", "9"], "1 <= min <= opt <= max"),
    (["--s3fd-checkpoint", "{s3fd}", "--compute-capabilities", "sm9x"], "unknown compute capability"),
])
def test_cli_user_errors_are_one_line(args: list[str], message: str, checkpoints: tuple[Path, Path],
                                      tmp_path: Path) -> None:
    args = [a.replace("{s3fd}", str(checkpoints[1])) for a in args] + ["--out", str(tmp_path / "e")]
    result = CliRunner().invoke(build_engines_command, args)
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr
    assert not (tmp_path / "e").exists()  # nothing is written before the options are known to be good


def test_cli_onnx_only_needs_no_tensorrt(checkpoints: tuple[Path, Path], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from wav2lip_trt.build_engines import engines

    monkeypatch.setattr(engines, "load_tensorrt", lambda *_: pytest.fail("TensorRT was loaded"))
    result = CliRunner().invoke(build_engines_command, [
        "--s3fd-checkpoint", str(checkpoints[1]), "--out", str(tmp_path), "--onnx-only", "--precision", "fp32", "-q"])
    assert result.exit_code == 0, result.output
    paths = artifact_paths(tmp_path, "s3fd", "fp32")
    assert paths.onnx.is_file() and read_manifest(paths.onnx_manifest)["kind"] == "onnx"
    assert not paths.engine.exists()


def test_command_defaults_match_the_options() -> None:
    default = BuildOptions()
    assert FLAVOR_CHOICES == builder.FLAVOR_CHOICES
    from wav2lip_trt.build_engines import command

    assert command.FLAVOR_CHOICES == FLAVOR_CHOICES
    assert DEFAULTS["s3fd_batch"] == default.s3fd_batch and DEFAULTS["wav2lip_batch"] == default.wav2lip_batch
    assert DEFAULTS["scoring_batch"] == default.scoring_batch
    assert [parse_size(DEFAULTS[f"s3fd_{k}_size"]) for k in ("min", "opt", "max")] == [
        default.s3fd_min_size, default.s3fd_opt_size, default.s3fd_max_size]
    ctx = build_engines_command.make_context("build-engines", [])
    assert options_from_params(ctx.params) == default


def test_options_round_trip_through_their_command() -> None:
    options = BuildOptions(
        checkpoint_path=Path("a b/wav2lip.pth"), s3fd_checkpoint=Path("s3fd.pth"), out=Path("eng"), precision="fp32",
        flavor="tensorrt-rtx", s3fd_batch=(1, 2, 16), s3fd_max_size=(1080, 1920), wav2lip_batch=(2, 64, 256),
        workspace_mib=2048, compute_capabilities=("8.6", "12.0"), force=True,
        expert_checkpoint=Path("lipsync_expert.pth"), disc_checkpoint=Path("d.pth"),
        syncnet_checkpoint=Path("syncnet_v2.model"), scoring_batch=(1, 20, 40),
    )
    args = shlex.split(options.command())[2:]
    ctx = build_engines_command.make_context("build-engines", args)
    assert options_from_params(ctx.params) == options
    assert BuildOptions.from_json(json.loads(json.dumps(options.to_json()))) == options


def test_compute_capability_spellings() -> None:
    assert parse_compute_capabilities("sm75,8.6, SM89 120 sm_121") == ("7.5", "8.6", "8.9", "12.0", "12.1")
    assert parse_compute_capabilities("portable") == ()
    assert parse_compute_capabilities("current") == ("current",)
    with pytest.raises(InputError):
        parse_compute_capabilities("current,sm86")


def test_public_api_is_lazy_and_complete() -> None:
    import subprocess
    import sys

    import wav2lip_trt.build_engines as api

    assert sorted(api.__all__) == sorted(api._HOME)
    assert all(getattr(api, name) is not None for name in api.__all__)
    code = "import sys, wav2lip_trt.build_engines.command; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0, "the CLI command must not import torch"


def _corrupt(manifest: dict, change: str) -> bytes:
    """``manifest`` spoiled as a hand edit, a half copy or a hostile file would spoil it."""
    spoiled, text = json.loads(json.dumps(manifest)), json.dumps(manifest)
    if change == "nested":
        return (text[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}").encode()
    if change == "huge number":
        return (text[:-1] + ', "x": 1' + "0" * 30 + "}").encode()
    if change == "not an object":
        return json.dumps([manifest]).encode()
    if change == "not UTF-8":
        return text[:-1].encode() + b', "note": "\xff"}'
    if change == "cut":
        return text[:-40].encode()
    key, _, inner = change.partition(".")
    if change == "inputs.profile":
        spoiled["inputs"][0]["profile"] = {"max": "1x3x128x128"}
    elif inner:
        spoiled[key][inner] = 7 if isinstance(spoiled[key][inner], (str, list)) else "7"
    elif change.startswith("no "):
        del spoiled[change[3:]]
    else:
        spoiled[key] = "7" if isinstance(spoiled[key], (dict, list)) else 7
    return json.dumps(spoiled).encode()


@pytest.mark.parametrize("change", [
    "nested", "huge number", "not an object", "not UTF-8", "cut", "request", "file", "file.sha256", "no checkpoint",
    "checkpoint.sha256", "tensorrt", "tensorrt.flavor", "target.compute_capabilities", "inputs", "inputs.profile",
    "model", "precision", "no kind", "build", "build.options",
])
def test_a_spoiled_manifest_means_rebuild_not_a_traceback(built, checkpoints: tuple[Path, Path], tmp_path: Path,
                                                          rt: builder.TensorRT, change: str) -> None:
    """A manifest is a file a user may edit or copy half-way: whatever is in it, the engine is rebuilt or refused.

    Each change once made stale_reason or check_engine raise RecursionError, AttributeError,
    KeyError or TypeError (json.loads with no bounds, then fields indexed unchecked).
    """
    out, _ = built
    paths = artifact_paths(out, "wav2lip", "fp16")
    engine = tmp_path / paths.engine.name
    engine.symlink_to(paths.engine)
    manifest_path = tmp_path / paths.engine_manifest.name
    manifest = read_manifest(paths.engine_manifest)
    ok = dict(checkpoint_path=checkpoints[0], flavor=rt.flavor.name, version=rt.version,
              compute_capability=manifest["target"]["compute_capabilities"][0])
    manifest_path.write_text(json.dumps(manifest))
    assert read_manifest(manifest_path) == manifest  # (check_engine takes it: test_check_engine_refuses_...)

    manifest_path.write_bytes(_corrupt(manifest, change))
    assert read_manifest(manifest_path) is None
    assert stale_reason(manifest_path, engine, manifest["request"]) == "no readable manifest"
    with pytest.raises(EngineError, match=r"has no readable manifest .*; rebuild it with: wav2lip-trt build-engines "
                                          r"--checkpoint_path .* --force$") as info:
        check_engine(engine, **ok)
    assert "\n" not in str(info.value)


def test_recorded_options_no_version_wrote_still_give_a_rebuild_command(built, checkpoints: tuple[Path, Path],
                                                                         tmp_path: Path, rt: builder.TensorRT) -> None:
    out, _ = built
    paths = artifact_paths(out, "s3fd", "fp16")
    engine = tmp_path / paths.engine.name
    engine.symlink_to(paths.engine)
    manifest = read_manifest(paths.engine_manifest)
    manifest["build"]["options"] = {"s3fd_batch": 3, "compute_capabilities": [8, 9]}  # from_json keeps both
    (tmp_path / paths.engine_manifest.name).write_text(json.dumps(manifest))
    with pytest.raises(EngineError, match=r"another checkpoint .* rebuild it with: wav2lip-trt build-engines "
                                          r"--s3fd-checkpoint \S+ --out \S+ --precision fp16$"):
        check_engine(engine, checkpoint_path=checkpoints[0], flavor=rt.flavor.name, version=rt.version,
                     compute_capability=manifest["target"]["compute_capabilities"][0])


def test_a_fifo_manifest_never_blocks_and_the_onnx_is_made_again(checkpoints: tuple[Path, Path],
                                                                 tmp_path: Path) -> None:
    import os
    import threading

    options = BuildOptions(s3fd_checkpoint=checkpoints[1], out=tmp_path, precision="fp32", onnx_only=True)
    build_engines(options, show_progress=False)
    paths = artifact_paths(tmp_path, "s3fd", "fp32")
    paths.onnx_manifest.unlink()
    os.mkfifo(paths.onnx_manifest)
    reports: list = []
    builder_thread = threading.Thread(target=lambda: reports.append(build_engines(options, show_progress=False)),
                                      daemon=True)
    builder_thread.start()
    builder_thread.join(120)
    blocked = builder_thread.is_alive()
    if blocked:  # in open(), waiting for a writer: give it one so the test ends, then fail
        os.close(os.open(paths.onnx_manifest, os.O_WRONLY | os.O_NONBLOCK))
        builder_thread.join(120)
    assert not blocked
    (result,) = reports[0].results
    assert (result.onnx_status, result.reason) == ("exported", "no readable manifest")
    assert read_manifest(paths.onnx_manifest)["kind"] == "onnx"  # the FIFO replaced by a real manifest
