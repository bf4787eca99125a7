"""``parity``'s scoring checks: the expert's, the discriminator's and SyncNet's towers on every rung.

Given ``--expert-checkpoint``, ``--disc-checkpoint`` or ``--syncnet-checkpoint``, every rung also
runs those networks' towers (the graphs ``build-engines`` exports and builds) on the same inputs:
random tensors in each tower's real range, and — for the expert and the discriminator — the
reference's own generated faces of the clip with their mel chunks, cut into the expert's windows
exactly as ``infer --score`` cuts them. A tower that disagrees names its graph in the report
(``expert_face/clip``), so a broken export or an FP16 overflow in a scorer is caught like one in
the generator.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..build_engines.options import graphs_of
from ..tensor_names import SCORING_GRAPHS
from .options import ParityOptions, Rung

if TYPE_CHECKING:
    import torch

    from ..runners.base import Runner

RANGES = {
    "expert_audio": (-4.0, 4.0),  # Wav2Lip's normalised log-mel
    "expert_face": (0.0, 1.0),  # lower halves / 255
    "disc_qual": (0.0, 1.0),  # faces / 255
    "syncnet_lip": (0.0, 255.0),  # raw BGR pixels
    "syncnet_audio": (-30.0, 30.0),  # MFCCs on the raw int16 scale (c0 = log energy, ~10-25)
}
BATCH = {"syncnet_lip": 2}  # 5 frames of 224x224 per window: a small batch is enough
DEFAULT_BATCH = 8


def scoring_graphs(options: ParityOptions) -> dict[str, Path]:
    """Graph -> checkpoint for every scoring tower whose checkpoint was given."""
    given = {"expert": options.expert_checkpoint, "disc_qual": options.disc_checkpoint,
             "syncnet_v2": options.syncnet_checkpoint}
    return {graph: Path(path) for network, path in given.items() if path is not None for graph in graphs_of(network)}


def random_feeds(graphs: Mapping[str, Path], seed: int) -> dict[str, tuple[str, dict[str, "torch.Tensor"]]]:
    """``"<graph>/random"`` -> (graph, feed): seeded uniform inputs over each tower's real range."""
    import torch

    out = {}
    for graph in graphs:
        _, name, _, shape = SCORING_GRAPHS[graph]
        low, high = RANGES[graph]
        rng = np.random.default_rng([seed, 3, list(SCORING_GRAPHS).index(graph)])
        values = rng.uniform(low, high, (BATCH.get(graph, DEFAULT_BATCH), *shape)).astype(np.float32)
        out[f"{graph}/random"] = (graph, {name: torch.from_numpy(values)})
    return out


def clip_feeds(graphs: Mapping[str, Path], pred: np.ndarray, mel: "torch.Tensor"
               ) -> dict[str, tuple[str, dict[str, "torch.Tensor"]]]:
    """``"<graph>/clip"`` feeds from the reference's generated faces (N, 3, 96, 96) and their mel chunks.

    The faces are truncated to uint8 as pasted, then scaled as the scorer scales them; the expert
    sees windows of 5 consecutive lower halves against the first face's chunk.
    """
    from ..scoring.expert import LOWER_HALF, WINDOW, expert_windows, faces_to_uint8, faces_to_unit

    unit = faces_to_unit(faces_to_uint8(pred))
    out = {}
    if "disc_qual" in graphs:
        out["disc_qual/clip"] = ("disc_qual", {"faces": unit})
    if "expert_face" in graphs and len(unit) >= WINDOW:
        out["expert_face/clip"] = ("expert_face", {"faces": expert_windows(unit[:, :, LOWER_HALF:]).contiguous()})
    if "expert_audio" in graphs:
        out["expert_audio/clip"] = ("expert_audio", {"mel": mel.reshape(-1, 1, 80, 16).float()})
    return out


@contextmanager
def scoring_runners(rung: Rung, graphs: Mapping[str, Path], artifacts: Path, engines: Path | None,
                    flavor: str) -> Iterator[dict[str, "Runner"]]:
    """The towers on this rung: torch from the checkpoints; ONNX Runtime and TensorRT from the very
    files ``build-engines`` wrote into ``artifacts`` (or the given ``engines``), as for the generator."""
    import torch

    from ..backends import RunnerRequest, create_graph_runners

    if not graphs:
        yield {}
        return
    if rung.backend == "torch":
        request = RunnerRequest(checkpoint_path=None, s3fd_checkpoint=None, device=torch.device(rung.device),
                                precision=rung.precision)
        with create_graph_runners("torch", graphs, request) as made:
            yield made.runners
        return
    from ..build_engines import artifact_paths

    runners: dict[str, Runner] = {}
    try:
        for graph, checkpoint in graphs.items():
            if rung.backend == "onnxruntime":
                from ..runners.onnxruntime_runner import OnnxRuntimeRunner

                runners[graph] = OnnxRuntimeRunner(artifact_paths(artifacts, graph, rung.precision).onnx, name=rung.name)
            else:
                from ..runners.tensorrt_runner import TensorRTRunner

                folder = engines if engines is not None else artifacts
                runners[graph] = TensorRTRunner(artifact_paths(folder, graph, rung.precision).engine,
                                                checkpoint_path=checkpoint, flavor=flavor, name=rung.name)
        yield runners
    finally:
        for runner in runners.values():
            runner.__exit__(None, None, None)


def run_tower(runner: "Runner", graph: str, feed: Mapping[str, "torch.Tensor"]) -> dict[str, np.ndarray]:
    """The tower's output on the host, FP32."""
    _, _, output, _ = SCORING_GRAPHS[graph]
    result = runner.infer(feed)[output]
    return {output: result.detach().to("cpu").float().numpy().copy()}


def scoring_batch(feeds: Mapping[str, tuple[str, Mapping[str, "torch.Tensor"]]]) -> int:
    """The largest batch any scoring feed has (the engines' profile must cover it)."""
    return max([DEFAULT_BATCH] + [next(iter(f.values())).shape[0] for _, f in feeds.values()])
