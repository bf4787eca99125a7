"""The TensorRT runner's binding rules, on CPU tensors and a fake execution context (no GPU needed)."""

from __future__ import annotations

import ctypes
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from wav2lip_trt.errors import EngineError
from wav2lip_trt.runners.tensorrt_runner import (
    ALIGNMENT,
    TensorRTRunner,
    bind_address,
    bind_input_shape,
    check_shapes_specified,
    is_aligned,
    needs_rebase,
    output_shape,
    profile_slices,
    rebase,
)

CPU_ALIGNMENT = 64  # what torch's CPU allocator guarantees; stands in for TensorRT's 256 on CUDA


def aligned_view(elements: int, alignment: int = ALIGNMENT) -> torch.Tensor:
    """A float32 view of ``elements`` that starts on an ``alignment`` boundary (CPU memory)."""
    base = torch.arange(elements + alignment, dtype=torch.float32)
    skip = (-base.data_ptr() % alignment) // 4
    view = base[skip : skip + elements]
    assert view.data_ptr() % alignment == 0
    return view


def test_alignment_is_tensorrts_256_bytes() -> None:
    assert ALIGNMENT == 256
    assert is_aligned(0) and is_aligned(256) and is_aligned(0x7F0000001000)
    assert not is_aligned(128) and not is_aligned(4) and not is_aligned(0x7F0000001004)


def test_needs_rebase_when_misaligned_or_not_dense() -> None:
    view = aligned_view(1024)
    assert not needs_rebase(view)
    assert not needs_rebase(view[64:])  # 256 bytes in
    assert needs_rebase(view[1:])  # 4 bytes in
    assert needs_rebase(view[32:])  # 128 bytes in
    assert needs_rebase(view.view(32, 32).t())  # aligned but not row-major
    assert needs_rebase(view.view(4, 4, 8, 8).contiguous(memory_format=torch.channels_last))
    assert not needs_rebase(view[1:], alignment=4)


def test_rebase_copies_only_what_cannot_be_bound() -> None:
    view = aligned_view(1024, CPU_ALIGNMENT)
    assert rebase(view, CPU_ALIGNMENT) is view
    moved = view[3:67]
    copy = rebase(moved, CPU_ALIGNMENT)
    assert copy is not moved and copy.is_contiguous() and copy.data_ptr() % CPU_ALIGNMENT == 0
    torch.testing.assert_close(copy, moved, rtol=0, atol=0)
    strided = view.view(32, 32).t()
    dense = rebase(strided, CPU_ALIGNMENT)
    assert dense.is_contiguous()
    torch.testing.assert_close(dense, strided, rtol=0, atol=0)


def test_rebase_checks_the_copy_is_aligned() -> None:
    with pytest.raises(EngineError, match=r"generator engine: input 'face'.*not 1099511627776-byte aligned"):
        rebase(aligned_view(64)[1:], 1 << 40, label="generator engine: input 'face'")


def test_profile_slices_cover_the_batch_in_order() -> None:
    assert profile_slices(10, 8) == [(0, 8), (8, 10)]
    assert profile_slices(16, 8) == [(0, 8), (8, 16)]
    assert profile_slices(3, 8) == [(0, 3)]
    assert profile_slices(0, 8) == []
    assert profile_slices(5, 1) == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]
    for batch in range(0, 40):
        for most in range(1, 12):
            slices = profile_slices(batch, most)
            assert [i for a, b in slices for i in range(a, b)] == list(range(batch))
            assert all(0 < b - a <= most for a, b in slices)
    with pytest.raises(ValueError):
        profile_slices(4, 0)


@pytest.mark.parametrize("row_floats", [3, 64, 80 * 16, 6 * 96 * 96])
def test_a_slice_is_misaligned_exactly_when_its_byte_offset_is(row_floats: int) -> None:
    rows = aligned_view(20 * row_floats).view(20, row_floats)
    for start, stop in profile_slices(20, 8):
        assert needs_rebase(rows[start:stop]) == ((start * row_floats * 4) % ALIGNMENT != 0)


class FakeContext:
    """An execution context that refuses what the test tells it to and records every binding."""

    def __init__(self, *, refuse_shape: bool = False, refuse_address: bool = False, missing: tuple[str, ...] = ()):
        self.refuse_shape, self.refuse_address, self.missing = refuse_shape, refuse_address, missing
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}

    def set_input_shape(self, name: str, shape: tuple) -> bool:
        if self.refuse_shape:
            return False
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name: str, address: int) -> bool:
        if self.refuse_address:
            return False
        self.addresses[name] = address
        return True

    def infer_shapes(self) -> list[str]:
        return list(self.missing)

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.shapes.get(name, (-1, 3))


def test_refused_input_shape_names_engine_tensor_shape_and_profile() -> None:
    with pytest.raises(EngineError, match=r"s3fd engine e\.engine: TensorRT refused shape \(9, 3, 64, 64\) for "
                                          r"input 'image' \(its profile allows \(1, 3, 64, 64\)\.\.\(8, 3, 1920, 1920\)\)"):
        bind_input_shape(FakeContext(refuse_shape=True), "s3fd engine e.engine", "image", torch.Size([9, 3, 64, 64]),
                         ((1, 3, 64, 64), (4, 3, 720, 1280), (8, 3, 1920, 1920)))
    context = FakeContext()
    bind_input_shape(context, "e", "image", [2, 3, 64, 64])
    assert context.shapes == {"image": (2, 3, 64, 64)}


def test_refused_or_unfit_addresses_are_errors() -> None:
    view = aligned_view(256)
    with pytest.raises(EngineError, match=r"e: TensorRT refused the address 0x[0-9a-f]+ of tensor 'mel' \(shape \(256,\)\)"):
        bind_address(FakeContext(refuse_address=True), "e", "mel", view)
    context = FakeContext()
    with pytest.raises(EngineError, match=r"tensor 'mel' of shape \(255,\) is at 0x[0-9a-f]+, not 256-byte aligned"):
        bind_address(context, "e", "mel", view[1:])
    with pytest.raises(EngineError, match="not contiguous"):
        bind_address(context, "e", "mel", view.view(16, 16).t())
    assert context.addresses == {}  # nothing misaligned ever reached TensorRT
    bind_address(context, "e", "mel", view)
    assert context.addresses == {"mel": view.data_ptr()}


def test_unspecified_shapes_are_errors() -> None:
    check_shapes_specified(FakeContext(), "e", {"mel": (2, 1, 80, 16)})
    with pytest.raises(EngineError, match=r"e: input shapes not fully specified: face \(given mel \(2, 1, 80, 16\)\)"):
        check_shapes_specified(FakeContext(missing=("face",)), "e", {"mel": (2, 1, 80, 16)})

    class Failing(FakeContext):
        def infer_shapes(self) -> list[str]:
            raise RuntimeError("mismatched batch")

    with pytest.raises(EngineError, match="shape inference failed for inputs mel .*: mismatched batch"):
        check_shapes_specified(Failing(), "e", {"mel": (2, 1, 80, 16)})

    class Older:  # bindings without infer_shapes
        all_binding_shapes_specified = False

    with pytest.raises(EngineError, match="not fully specified"):
        check_shapes_specified(Older(), "e", {"mel": (2, 1, 80, 16)})


def test_output_shapes_must_be_known_and_fit() -> None:
    context = FakeContext()
    with pytest.raises(EngineError, match=r"output 'pred' has unresolved shape \(-1, 3\)"):
        output_shape(context, "e", "pred", 100)
    context.shapes["pred"] = (8, 3)
    assert output_shape(context, "e", "pred", 24) == (8, 3)
    with pytest.raises(EngineError, match=r"output 'pred' of shape \(8, 3\) exceeds its buffer of 12 elements"):
        output_shape(context, "e", "pred", 12)


class DoublingContext(FakeContext):
    """A one-input engine, y = 2 x on float32 rows of 3, that reads and writes the bound CPU addresses."""

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.shapes["x"]

    def execute_async_v3(self, stream_handle: int) -> bool:
        n = int(np.prod(self.shapes["x"]))
        for name in ("x", "y"):
            assert self.addresses[name] % CPU_ALIGNMENT == 0, f"{name} bound misaligned"
        x = np.ctypeslib.as_array((ctypes.c_float * n).from_address(self.addresses["x"]))
        y = np.ctypeslib.as_array((ctypes.c_float * n).from_address(self.addresses["y"]))
        y[:] = 2 * x
        self.batches.append(self.shapes["x"][0])
        return True


def fake_runner(max_batch: int) -> tuple[TensorRTRunner, DoublingContext]:
    """A TensorRTRunner around the doubling context: the real binding and slicing code, on the CPU."""

    class CpuRunner(TensorRTRunner):
        alignment = CPU_ALIGNMENT

        def _execute(self) -> bool:
            return self.context.execute_async_v3(0)

    runner = object.__new__(CpuRunner)
    context = DoublingContext()
    context.batches = []
    runner.name, runner._label, runner.device, runner.stream = "fake", "fake engine", torch.device("cpu"), None
    runner.context, runner.input_names, runner.output_names = context, ("x",), ("y",)
    runner.dtypes = {"x": torch.float32, "y": torch.float32}
    runner.input_dtypes = {"x": torch.float32}
    runner.profile = {"x": ((1, 3), (max_batch, 3), (max_batch, 3))}
    runner.max_batch = max_batch
    runner._outputs = {"y": torch.empty(max_batch * 3)}
    return runner, context


def test_batches_above_the_profile_run_in_slices_without_misaligned_bindings() -> None:
    runner, context = fake_runner(max_batch=4)
    rows = aligned_view(3 * 11, CPU_ALIGNMENT).view(11, 3)
    feed = rows[1:]  # 12 bytes in: misaligned, as is every slice of it that starts at an odd offset
    out = runner.infer({"x": feed})
    assert context.batches == [4, 4, 2]
    torch.testing.assert_close(out["y"], 2 * feed, rtol=0, atol=0)
    small = runner.infer({"x": rows[2:5].to(torch.float16)})  # cast to the engine's dtype, then bound
    torch.testing.assert_close(small["y"], 2 * rows[2:5], rtol=0, atol=0)
    assert small["y"].dtype == torch.float32 and context.batches[-1] == 3


def test_inputs_outside_the_profile_are_refused_before_binding() -> None:
    runner, context = fake_runner(max_batch=4)
    with pytest.raises(EngineError, match=r"fake engine: input x of shape \(2, 5\) is outside the engine's profile"):
        runner.infer({"x": torch.zeros(2, 5)})
    assert context.addresses == {}
    runner.__exit__(None, None, None)
    with pytest.raises(EngineError, match="closed"):
        runner.infer({"x": torch.zeros(2, 3)})


def test_imports_point_one_way() -> None:
    """build_engines never imports runners (runners import build_engines); runners never import the pipeline."""
    code = (
        "import sys\n"
        "import wav2lip_trt.build_engines.export, wav2lip_trt.build_engines.engines\n"
        "assert not [m for m in sys.modules if m.startswith('wav2lip_trt.runners')], 'build_engines imported runners'\n"
        "import wav2lip_trt.runners.tensorrt_runner, wav2lip_trt.runners.torch_runner\n"
        "import wav2lip_trt.runners.onnxruntime_runner\n"
        "assert 'wav2lip_trt.pipeline' not in sys.modules, 'a runner imported the pipeline'\n"
        "from wav2lip_trt import tensor_names\n"
        "from wav2lip_trt.runners import base\n"
        "assert base.S3FD_OUTPUTS is tensor_names.S3FD_OUTPUTS and base.WAV2LIP_INPUTS is tensor_names.WAV2LIP_INPUTS\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
