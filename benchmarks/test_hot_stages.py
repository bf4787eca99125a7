"""The pipeline's hot stages and both networks under pytest-benchmark (torch on the CPU).

The cases are the library's own (``wav2lip_trt.bench.hot_stage_cases`` / ``model_cases``), the
same ones ``wav2lip-trt bench --micro`` times, so the two never drift apart. Random-weight
checkpoints stand in for the released ones (same graphs, same cost).

    pytest benchmarks/test_hot_stages.py                       # all (~3 min on 2 cores)
    pytest benchmarks/test_hot_stages.py -k "not wav2lip-b128"  # skip the slowest
    pytest benchmarks/test_hot_stages.py --benchmark-json out.json
"""

from __future__ import annotations

from pathlib import Path

import pytest

from wav2lip_trt.bench import hot_stage_cases, model_cases

# 360p frames, the pipeline's default batches: detection 16, generator 128, 10 s of audio.
STAGES = {case.name: case for case in hot_stage_cases(height=360, width=640, detect_batch=16, generate_batch=128)}
MODEL_SHAPES = dict(s3fd_batch=4, s3fd_size=(240, 320), wav2lip_batches=(32, 128))
MODEL_NAMES = [case.name for case in model_cases(Path("unused"), Path("unused"), **MODEL_SHAPES)]  # setup is lazy


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from wav2lip_trt.random_weights import write_random_checkpoints

    return write_random_checkpoints(tmp_path_factory.mktemp("checkpoints"), seed=0)


@pytest.mark.parametrize("name", list(STAGES))
def test_hot_stage(benchmark, name: str) -> None:
    case = STAGES[name]
    benchmark.extra_info.update(items=case.items, unit=case.unit)
    benchmark.pedantic(case.setup(), rounds=10, warmup_rounds=1)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_torch_cpu(benchmark, checkpoints: tuple[Path, Path], name: str) -> None:
    case = next(c for c in model_cases(*checkpoints, **MODEL_SHAPES) if c.name == name)
    benchmark.extra_info.update(items=case.items, unit=case.unit)
    benchmark.pedantic(case.setup(), rounds=3, warmup_rounds=1)
