"""``parity``'s seeded inputs: random tensors in the real range of each model's input."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

MEL_RANGE = (-4.0, 4.0)  # the mel front end's output range (symmetric, max_abs_value 4)


def s3fd_feed(batch: int, height: int, width: int, seed: int = 0) -> dict[str, "torch.Tensor"]:
    """The S3FD input for random BGR frames: exactly the pipeline's pre-processing, so the range is real."""
    from ..detect import preprocess

    frames = np.random.default_rng([seed, 1]).integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
    return {"image": preprocess(frames)}


def wav2lip_feed(batch: int, seed: int = 0) -> dict[str, "torch.Tensor"]:
    """Random faces and mels in the generator's layout and range: face [0, 1] with the lower half
    masked, mel uniform over the front end's [-4, 4]."""
    from ..faces import IMG_SIZE, generator_inputs

    rng = np.random.default_rng([seed, 2])
    faces = rng.integers(0, 256, (batch, IMG_SIZE, IMG_SIZE, 3), dtype=np.uint8)
    mels = rng.uniform(*MEL_RANGE, (batch, 80, 16)).astype(np.float32)
    mel, face = generator_inputs(faces, mels)
    return {"mel": mel, "face": face}
