"""The FP16 policy: S3FD's L2Norm stays in FP32, in real FP16 arithmetic and in the ONNX graph alike."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import pytest
import torch

from wav2lip_trt.build_engines.precision import (
    FP32_MODULES, Fp32Island, convert_to_fp16, fp32_node_names, fp32_scopes, half_with_policy, onnx_scope_prefix,
)
from wav2lip_trt.models import S3FD, L2Norm, Wav2Lip
from wav2lip_trt.random_weights import random_s3fd_state_dict
from wav2lip_trt.runners.base import S3FD_OUTPUTS

if TYPE_CHECKING:
    import onnx

FP16_MAX = 65504.0
S3FD_MEAN = torch.tensor([104.0, 117.0, 123.0]).view(1, 3, 1, 1)
TRUNK_GAINS = {"conv3_3": ("conv4_1", 12.0), "conv4_3": ("conv5_1", 8.0), "conv5_3": ("fc6", 10.0)}
"""Scale each L2Norm input by a gain and undo it in the next conv: the FP32 network computes the same
function, but the sums of squares at the L2Norms become ~3e5, as with the released weights (~2.8e5)."""

POLICY_BOUND = 5e-3  # max |fp16 - fp32| per output, relative to the output's largest |value| (measured <= 2e-3)
NAIVE_FAILURE = 0.5  # all-FP16 errors on the three L2Norm levels are at least this (measured ~1.0)


def realistic_s3fd() -> S3FD:
    """Random-weight S3FD whose L2Norm inputs are as large as the released model's."""
    state = random_s3fd_state_dict(seed=0)
    for conv, (following, gain) in TRUNK_GAINS.items():
        state[f"{conv}.weight"] *= gain
        state[f"{conv}.bias"] *= gain
        state[f"{following}.weight"] /= gain  # ReLU is positively homogeneous, so this undoes the gain exactly
    model = S3FD()
    model.load_state_dict(state)
    return model.eval()


def frame(height: int = 64, width: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(1, 3, height, width, generator=g) * 255 - S3FD_MEAN


def test_policy_scopes_are_the_s3fd_l2norms() -> None:
    assert FP32_MODULES == (L2Norm,)
    assert fp32_scopes(S3FD()) == ["conv3_3_norm", "conv4_3_norm", "conv5_3_norm"]
    assert fp32_scopes(Wav2Lip()) == []


def test_half_with_policy_keeps_only_the_scopes_in_fp32() -> None:
    model = realistic_s3fd()
    half = half_with_policy(model)
    assert next(model.parameters()).dtype == torch.float32  # the original is untouched
    for name in fp32_scopes(model):
        island = half.get_submodule(name)
        assert isinstance(island, Fp32Island)
        assert island.module.weight.dtype == torch.float32
    assert half.conv3_3.weight.dtype == torch.float16
    assert half.fc7_mbox_conf.weight.dtype == torch.float16


def test_policy_keeps_s3fd_close_to_fp32_where_all_fp16_fails() -> None:
    """Real FP16 arithmetic (torch half on CPU): ONNX Runtime's CPU FP16 would compute in FP32."""
    model, x = realistic_s3fd(), frame()
    sums: dict[str, float] = {}
    hooks = [
        model.get_submodule(name).register_forward_hook(
            lambda mod, inp, out, name=name: sums.__setitem__(name, inp[0].pow(2).sum(1).max().item())
        )
        for name in fp32_scopes(model)
    ]
    with torch.no_grad():
        reference = model(x)
    for hook in hooks:
        hook.remove()
    assert min(sums.values()) > FP16_MAX, sums  # the activations really are FP16-hostile

    with torch.no_grad():
        naive = [o.float() for o in copy.deepcopy(model).half()(x.half())]
        policy = [o.float() for o in half_with_policy(model)(x.half())]

    for name, ref, all_fp16, ours in zip(S3FD_OUTPUTS, reference, naive, policy):
        scale = ref.abs().max().item()
        policy_error = (ours - ref).abs().max().item() / scale
        assert policy_error <= POLICY_BOUND, (name, policy_error)
        naive_error = (all_fp16 - ref).abs().max().item() / scale
        if name[-1] in "123":  # the levels fed by an L2Norm
            assert not torch.isfinite(all_fp16).all() or naive_error >= NAIVE_FAILURE, (name, naive_error)


def test_l2norm_sum_of_squares_overflows_in_fp16() -> None:
    x = torch.full((1, 256, 1, 1), 40.0)  # 256 * 1600 = 409600 > 65504
    assert torch.isinf(x.half().pow(2).sum(1)).all()
    assert torch.isfinite(Fp32Island(L2Norm(256, scale=10.0))(x.half())).all()
    assert float(torch.tensor(1e-10).half()) == 0.0  # why the eps must stay in FP32 too


@pytest.fixture(scope="module")
def s3fd_onnx() -> "onnx.ModelProto":
    from wav2lip_trt.build_engines.export import onnx_model

    proto, _ = onnx_model(realistic_s3fd(), "s3fd", "fp32")
    return proto


def test_onnx_block_list_follows_the_same_policy(s3fd_onnx: "onnx.ModelProto") -> None:
    scopes = fp32_scopes(S3FD())
    names = fp32_node_names(s3fd_onnx, scopes)
    ops = {node.op_type for node in s3fd_onnx.graph.node if node.name in names}
    assert {"Pow", "ReduceSum", "Sqrt", "Add", "Div", "Mul"} <= ops
    assert all(any(n.startswith(onnx_scope_prefix(s)) for s in scopes) for n in names)
    for scope in scopes:
        assert any(n.startswith(onnx_scope_prefix(scope)) for n in names)


def test_fp16_onnx_computes_the_l2norm_in_fp32_with_its_eps(s3fd_onnx: "onnx.ModelProto") -> None:
    from onnx import TensorProto, numpy_helper

    fp16, kept = convert_to_fp16(s3fd_onnx, fp32_scopes(S3FD()))
    nodes = {n.name: n for n in fp16.graph.node}
    producer = {out: n for n in fp16.graph.node for out in n.output}
    types = {vi.name: vi.type.tensor_type.elem_type for vi in fp16.graph.value_info}
    for scope in fp32_scopes(S3FD()):
        prefix = onnx_scope_prefix(scope)
        for op in ("Pow", "ReduceSum", "Sqrt", "Add", "Div"):
            node = nodes[f"{prefix}{op}"]
            assert types.get(node.output[0]) == TensorProto.FLOAT, (node.name, types.get(node.output[0]))
        eps_producers = [producer[i] for i in nodes[f"{prefix}Add"].input if producer.get(i) is not None
                         and producer[i].op_type == "Constant"]
        assert len(eps_producers) == 1, "the eps must come straight from its FP32 Constant, not via FP16 casts"
        eps = numpy_helper.to_array(eps_producers[0].attribute[0].t)
        assert eps.dtype.name == "float32" and float(eps) == pytest.approx(1e-10)
    conv_weights = {init.name: init.data_type for init in fp16.graph.initializer}
    assert conv_weights["conv3_3.weight"] == TensorProto.FLOAT16
    assert [i.type.tensor_type.elem_type for i in fp16.graph.input] == [TensorProto.FLOAT]
    assert {o.type.tensor_type.elem_type for o in fp16.graph.output} == {TensorProto.FLOAT}


def test_fp32_islands_survive_a_later_cast() -> None:
    """The torch FP16 backend casts the whole module again; the L2Norm must stay FP32 regardless."""
    from wav2lip_trt.runners.base import S3FD_INPUTS
    from wav2lip_trt.runners.torch_runner import TorchRunner

    runner = TorchRunner(half_with_policy(S3FD()), S3FD_INPUTS, S3FD_OUTPUTS, dtype=torch.float16)
    norms = [m for name, m in runner.module.named_modules() if name.endswith("_norm.module")]
    assert len(norms) == 3 and all(p.dtype == torch.float32 for m in norms for p in m.parameters())
    assert runner.module.conv1_1.weight.dtype == torch.float16
