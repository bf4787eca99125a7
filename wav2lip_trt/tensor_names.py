"""Tensor names shared by the ONNX export and every runner, for all seven graphs.

They live in a module of their own so that imports point one way: ``runners`` may import
``build_engines`` (the TensorRT runner loads and checks engines with it), while ``build_engines``
needs only these names and so never imports ``runners``.
"""

from __future__ import annotations

S3FD_INPUTS = ("image",)
S3FD_OUTPUTS = tuple(f"{kind}{level}" for level in range(1, 7) for kind in ("cls", "reg"))
"""Raw S3FD head outputs in network order: cls1, reg1, ..., cls6, reg6 (no softmax)."""

WAV2LIP_INPUTS = ("mel", "face")
WAV2LIP_OUTPUTS = ("pred",)


SCORING_GRAPHS: dict[str, tuple[str, str, str, tuple[int, ...]]] = {
    # graph: (network it comes from, input, output, per-sample input shape)
    "expert_audio": ("expert", "mel", "audio_embedding", (1, 80, 16)),
    "expert_face": ("expert", "faces", "face_embedding", (15, 48, 96)),
    "disc_qual": ("disc_qual", "faces", "real_probability", (3, 96, 96)),
    "syncnet_lip": ("syncnet_v2", "frames", "lip_feature", (3, 5, 224, 224)),
    "syncnet_audio": ("syncnet_v2", "mfcc", "audio_feature", (1, 13, 20)),
}
"""The scoring networks, one graph per tower (the scorers call the towers separately); every
axis but the batch is fixed."""
