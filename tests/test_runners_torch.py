"""The torch runner's contract and its CUDA-graph padding rules (pure parts on the CPU)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from wav2lip_trt.runners.base import Runner, runner_stream
from wav2lip_trt.runners.torch_runner import TorchRunner, stage_inputs, valid_rows


class RowNet(nn.Module):
    """Each output row depends only on its input row, like the real networks in eval mode."""

    def forward(self, mel: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
        return face * 2 + mel.mean(dim=(1, 2, 3)).view(-1, 1, 1, 1)


def test_stage_inputs_pads_a_smaller_batch_into_the_static_buffers() -> None:
    static = [torch.full((4, 1, 2, 2), -1.0), torch.full((4, 3, 2, 2), -1.0)]
    args = [torch.ones(2, 1, 2, 2), torch.arange(24.0).view(2, 3, 2, 2)]
    assert stage_inputs(static, args) == 2
    torch.testing.assert_close(static[1][:2], args[1], rtol=0, atol=0)
    assert (static[0][2:] == -1).all() and (static[1][2:] == -1).all()  # padding rows untouched
    outputs = [torch.arange(4.0).view(4, 1)]
    rows = valid_rows(outputs, 2)
    assert rows[0].tolist() == [[0.0], [1.0]] and rows[0].data_ptr() == outputs[0].data_ptr()


def test_stage_inputs_refuses_what_does_not_fit() -> None:
    static = [torch.zeros(4, 1, 2, 2), torch.zeros(4, 3, 2, 2)]
    before = [s.clone() for s in static]
    for args in (
        [torch.ones(5, 1, 2, 2), torch.ones(5, 3, 2, 2)],  # larger than the graph: eager
        [torch.ones(2, 1, 2, 2), torch.ones(2, 3, 2, 3)],  # another per-sample shape
        [torch.ones(2, 1, 2, 2), torch.ones(2, 3, 2, 2, dtype=torch.float16)],  # another dtype
        [torch.ones(2, 1, 2, 2), torch.ones(3, 3, 2, 2)],  # inconsistent batch
        [torch.ones(2, 1, 2, 2)],  # missing input
    ):
        assert stage_inputs(static, args) is None
    for s, b in zip(static, before):
        torch.testing.assert_close(s, b, rtol=0, atol=0)  # nothing half-copied


def test_padded_replay_equals_eager_rows() -> None:
    """The arithmetic of a padded replay, with the module standing in for the graph."""
    net = RowNet()
    static = [torch.randn(8, 1, 4, 4), torch.randn(8, 3, 4, 4)]
    args = [torch.randn(3, 1, 4, 4), torch.randn(3, 3, 4, 4)]
    batch = stage_inputs(static, args)
    assert batch == 3
    (got,) = valid_rows([net(*static)], batch)
    torch.testing.assert_close(got, net(*args))


def test_cpu_runner_has_no_stream_and_no_graphs() -> None:
    runner = TorchRunner(RowNet(), ("mel", "face"), ("pred",), cuda_graphs=True, graph_batch=4)
    assert isinstance(runner, Runner)
    assert runner.stream is None and not runner.cuda_graphs
    assert runner.input_dtypes == {"mel": torch.float32, "face": torch.float32}
    out = runner.infer({"mel": torch.ones(2, 1, 4, 4), "face": torch.ones(2, 3, 4, 4)})
    assert out["pred"].shape == (2, 3, 4, 4)
    assert runner_stream(torch.device("cpu"), None) is None
    with pytest.raises(ValueError, match="graph_batch"):
        TorchRunner(RowNet(), ("mel", "face"), ("pred",), graph_batch=0)


@pytest.mark.gpu
def test_cuda_runner_works_on_its_own_stream() -> None:
    given = torch.cuda.Stream()
    runner = TorchRunner(RowNet(), ("mel", "face"), ("pred",), device="cuda", dtype=torch.float16, stream=given)
    assert runner.stream is given and runner.input_dtypes["face"] == torch.float16
    own = TorchRunner(RowNet(), ("mel", "face"), ("pred",), device="cuda")
    assert own.stream is not None
    assert own.stream != torch.cuda.current_stream() and own.stream != torch.cuda.default_stream()
    with torch.cuda.stream(given):
        feed = {"mel": torch.ones(2, 1, 4, 4, device="cuda"), "face": torch.ones(2, 3, 4, 4, device="cuda")}
        out = runner.infer(feed)["pred"]
        assert out.dtype == torch.float32 and torch.all(out == 3)


@pytest.mark.gpu
def test_graph_captures_once_at_the_fixed_batch() -> None:
    stream = torch.cuda.Stream()
    runner = TorchRunner(RowNet(), ("mel", "face"), ("pred",), device="cuda", cuda_graphs=True, graph_batch=4,
                         stream=stream)
    eager = RowNet()
    with torch.cuda.stream(stream):
        for batch in (2, 4, 3, 6, 4, 1):  # the first (tail-sized) batch already captures at 4
            feed = {"mel": torch.randn(batch, 1, 4, 4, device="cuda"), "face": torch.randn(batch, 3, 4, 4, device="cuda")}
            got = runner.infer(feed)["pred"].clone()
            assert got.shape[0] == batch
            torch.testing.assert_close(got, eager(feed["mel"], feed["face"]))
            assert runner._graph is not None and runner._graph.batch == 4
    assert runner.cuda_graphs
