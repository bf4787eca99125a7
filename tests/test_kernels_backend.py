"""Kernel dispatch, the interpreter set-up, compilation for a GPU target, and a CUDA parity check.

The Triton tests elsewhere need no ``TRITON_INTERPRET=1``: CPU tensors always go to a copy of
the kernel module whose kernels are wrapped in Triton's interpreter, whatever the import
order. The subprocess test below checks the other set-up (the variable set before triton is
imported), and the compile test builds every kernel for Hopper without a GPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from wav2lip_trt.errors import InputError, MissingDependencyError
from wav2lip_trt.kernels import backend, resolve_impl

CPU = torch.device("cpu")


def test_auto_is_torch_on_cpu_and_triton_on_cuda(monkeypatch) -> None:
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    assert resolve_impl("auto", CPU) == "torch"
    assert resolve_impl("triton", CPU) == "triton"
    assert resolve_impl("torch", torch.device("cuda")) == "torch"
    monkeypatch.setattr(backend, "triton_available", lambda: True)
    assert resolve_impl("auto", torch.device("cuda")) == "triton"
    monkeypatch.setattr(backend, "triton_available", lambda: False)
    assert resolve_impl("auto", torch.device("cuda")) == "torch"


def test_environment_overrides_auto_only(monkeypatch) -> None:
    monkeypatch.setenv(backend.ENV_VAR, "triton")
    assert resolve_impl("auto", CPU) == "triton"
    assert resolve_impl("torch", CPU) == "torch"
    monkeypatch.setenv(backend.ENV_VAR, "Torch")
    assert resolve_impl("auto", torch.device("cuda")) == "torch"
    monkeypatch.setenv(backend.ENV_VAR, "tensorrt")
    with pytest.raises(InputError, match=backend.ENV_VAR):
        resolve_impl("auto", CPU)


def test_unknown_impl_lists_the_valid_ones() -> None:
    with pytest.raises(InputError, match="auto, triton, torch"):
        resolve_impl("cuda", CPU)


def test_missing_triton_says_what_to_install(monkeypatch) -> None:
    monkeypatch.setattr(backend, "triton_available", lambda: False)
    with pytest.raises(MissingDependencyError, match="pip install"):
        backend.triton_kernels(CPU)


def test_cpu_tensors_get_interpreted_kernels() -> None:
    pytest.importorskip("triton")
    from triton.runtime.interpreter import InterpretedFunction

    module = backend.triton_kernels(CPU)
    assert module is backend.triton_kernels(CPU)
    assert isinstance(module.crop_kernel, InterpretedFunction)
    assert isinstance(module._taps, InterpretedFunction)  # helpers too


def test_interpreter_variable_set_before_triton_import() -> None:
    """The usual Triton set-up: TRITON_INTERPRET=1 before the first import of triton."""
    pytest.importorskip("triton")
    script = textwrap.dedent(
        """
        import numpy as np, torch, triton, cv2
        from wav2lip_trt.kernels import crop_faces_device, s3fd_preprocess
        from wav2lip_trt.detect import preprocess
        frames = np.random.default_rng(0).integers(0, 256, (2, 20, 30, 3), dtype=np.uint8)
        assert torch.equal(s3fd_preprocess(torch.from_numpy(frames), impl="triton"), preprocess(frames))
        crop = crop_faces_device(torch.from_numpy(frames), [(1, 19, 2, 29), (0, 20, 0, 30)], impl="triton")
        assert np.array_equal(crop[0].numpy(), cv2.resize(frames[0, 1:19, 2:29], (96, 96)))
        print("ok")
        """
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    env.pop(backend.ENV_VAR, None)
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok"


def _compiled_copy(monkeypatch: pytest.MonkeyPatch):
    """A fresh copy of the kernel module decorated for compilation, even under TRITON_INTERPRET=1."""
    import importlib.util

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    spec = importlib.util.find_spec("wav2lip_trt.kernels._triton")
    copy = importlib.util.spec_from_file_location("_kernels_for_sm90", spec.origin)
    module = importlib.util.module_from_spec(copy)
    copy.loader.exec_module(module)
    return module


def _compile_all(kernels) -> dict[str, str]:
    """PTX of every kernel built for sm_90 (no GPU needed), with the launch options we use."""
    from triton import compile as triton_compile
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    levels = lambda prefix, kind: {f"{prefix}{i}": kind for i in range(1, 7)}  # noqa: E731
    jobs = {
        "preprocess": (kernels.s3fd_preprocess_kernel, {"frames": "*u8", "out": "*fp16", "hw": "i32",
                       "mean_r": "i32", "mean_g": "i32", "mean_b": "i32"}, {"BLOCK": 1024}),
        "best": (kernels.s3fd_best_kernel, {**levels("c", "*fp32"), **levels("n", "i32"),
                 **{f"k{i}": "i32" for i in range(1, 6)}, "part_margin": "*fp32", "part_index": "*i32",
                 "part_bad": "*i8", "num_chunks": "i32"}, {"BLOCK": 1024}),
        "choose": (kernels.s3fd_choose_kernel, {"part_margin": "*fp32", "part_index": "*i32", "part_bad": "*i8",
                   "num_chunks": "i32", **levels("r", "*fp32"), **levels("n", "i32"), **levels("w", "i32"),
                   "out_box": "*i64", "out_found": "*i8", "out_bad": "*i8"}, {"BLOCK_K": 256}),
        "nms": (kernels.nms_kernel, {"boxes": "*fp32", "counts": "*i32", "keep": "*i8", "K": "i32",
                "threshold": "fp32"}, {"BLOCK_K": 256}),
        "crop": (kernels.crop_kernel, {"frames": "*u8", "boxes": "*i64", "lut": "*fp32", "faces": "*u8",
                 "face_input": "*fp32", "H": "i32", "W": "i32"},
                 {"SIZE": 96, "HALF": 48, "WRITE_FACES": True, "WRITE_INPUT": True, "BLOCK": 1024}),
        "mel": (kernels.mel_chunks_kernel, {"mel": "*fp64", "starts": "*i64", "out": "*fp32", "T": "i32"},
                {"N_MELS": 80, "STEP": 16, "BLOCK_M": 128}),
        "paste": (kernels.paste_kernel, {"frames": "*u8", "pred": "*fp16", "boxes": "*i64", "H": "i32", "W": "i32",
                  "feather_div": "i32"}, {"SRC": 96, "FEATHER": True, "BLOCK": 1024}),
    }
    ptx = {}
    for name, (fn, signature, constants) in jobs.items():
        signature = {**signature, **{key: "constexpr" for key in constants}}
        names = list(signature)
        source = ASTSource(fn, signature, constexprs={(names.index(k),): v for k, v in constants.items()})
        compiled = triton_compile(source, target=GPUTarget("cuda", 90, 32), options={"enable_fp_fusion": False})
        ptx[name] = compiled.asm["ptx"]
    return ptx


def test_kernels_compile_for_hopper_with_exact_arithmetic(monkeypatch) -> None:
    """CI has no GPU: this at least proves the compiled path builds and keeps IEEE float32 ops."""
    pytest.importorskip("triton")
    kernels = _compiled_copy(monkeypatch)
    try:
        ptx = _compile_all(kernels)
    except (ImportError, RuntimeError, FileNotFoundError) as err:  # no NVIDIA backend or ptxas here
        pytest.skip(f"cannot compile for sm_90 on this machine: {err}")
    for name, text in ptx.items():
        assert "div.full.f32" not in text, f"{name}: approximate float32 division"
        assert "fma.rn.f32" not in text, f"{name}: float32 mul+add contracted into an FMA"
        assert "ex2.approx" not in text, f"{name}: approximate exp"
    assert "div.rn.f64" in ptx["crop"] and "div.rn.f32" in ptx["nms"]


requires_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs an NVIDIA GPU (runs the compiled Triton kernels)"
)


@requires_cuda
@pytest.mark.gpu
def test_compiled_kernels_equal_torch_reference_on_cuda() -> None:
    pytest.importorskip("triton")
    from wav2lip_trt.kernels import (
        choose_faces_device,
        crop_to_generator_input,
        detections_device,
        paste_back_batch,
        s3fd_preprocess,
    )
    from wav2lip_trt.samples import talking_face_frames

    rng = np.random.default_rng(0)
    frames = torch.from_numpy(np.stack(list(talking_face_frames(4, width=640, height=360, seed=1)))).cuda()
    for dtype in (torch.float32, torch.float16):
        assert torch.equal(s3fd_preprocess(frames, dtype, impl="triton"), s3fd_preprocess(frames, dtype, impl="torch"))
    sizes = [(90, 160), (45, 80), (22, 40), (15, 24), (8, 12), (4, 6)]
    outputs = []
    for h, w in sizes:
        outputs += [torch.from_numpy(rng.normal(0, 2, (4, 2, h, w)).astype(np.float32)).cuda(),
                    torch.from_numpy(rng.normal(0, 1, (4, 4, h, w)).astype(np.float32)).cuda()]
    a, b = choose_faces_device(outputs, impl="triton"), choose_faces_device(outputs, impl="torch")
    assert a.to_list() == b.to_list()
    for x, y in zip(detections_device(outputs, impl="triton"), detections_device(outputs, impl="torch")):
        assert torch.equal(x, y)
    boxes = [(40, 300, 200, 420), (0, 360, 0, 640), (100, 101, 5, 6), (10, 58, 10, 58)]
    mel = torch.from_numpy(rng.normal(size=(80, 100))).cuda()
    fed = crop_to_generator_input(frames, boxes, mel, [0, 10, 50, 84], impl="triton")
    ref = crop_to_generator_input(frames, boxes, mel, [0, 10, 50, 84], impl="torch")
    assert torch.equal(fed[0], ref[0]) and torch.equal(fed[1], ref[1])
    pred = torch.rand((4, 3, 96, 96), device="cuda")
    for blend in ("none", "feather"):
        x = paste_back_batch(frames.clone(), pred, boxes, blend, impl="triton")
        y = paste_back_batch(frames.clone(), pred, boxes, blend, impl="torch")
        assert torch.equal(x, y)
