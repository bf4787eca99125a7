"""Frames in flight bounded by bytes: how many frames each stage may hold for a given frame size."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_FRAME_MEMORY_MB = 256
"""Default ``--frame-memory``: 720p keeps 28 frames per generator batch, 4K keeps 3."""

WRITER_QUEUE = 1  # finished batches waiting for the encoder besides the one it is writing
HELD_BATCHES = 2 + WRITER_QUEUE  # being generated, queued, being written
CPU_GENERATOR_CHUNK = 8
"""Faces per Wav2Lip forward on the CPU. Activations cost ~11 MB a face in FP32 (1.4 GB at the
original's 128); with the original's NHWC-strided input every batch size from 2 up gives the same
bits, so chunks never leave a single face on its own (see :func:`chunk_sizes`). 8 rather than 16:
half the activations for the same throughput on 2 cores, and a heap that holds them fragments less
(peak RSS at 720p, see :mod:`~wav2lip_trt.execution.memory`)."""


@dataclass(frozen=True)
class BatchPlan:
    """Frame counts per stage, derived from the frame size and the memory budget."""

    frame_bytes: int
    generator_batch: int  # frames held until their faces are generated and pasted
    decode_ahead: int  # decoded frames waiting for detection or generation
    writer_batches: int  # finished batches queued for the encoder
    buffers: int  # host buffers of ``largest_batch`` frames for finished frames (GPU path)

    @property
    def largest_batch(self) -> int:
        """The most frames one generator batch can hold: :func:`chunk_sizes` folds a lone face into the
        part before it, so with parts of 2 an odd count ends in a part of 3."""
        return self.generator_batch + (self.generator_batch == 2)

    def describe(self) -> str:
        mib = self.frame_bytes / 2**20
        return (f"{self.generator_batch} frames per generator batch, {self.decode_ahead} decoded ahead "
                f"({mib:.1f} MiB a frame)")


def plan_batches(width: int, height: int, *, budget_mb: float = DEFAULT_FRAME_MEMORY_MB, wav2lip_batch_size: int = 128,
                 face_det_batch_size: int = 16) -> BatchPlan:
    """Split ``budget_mb`` between the generator batch, its queue to the encoder and the decoder.

    The decoder's look-ahead gets an eighth of the budget; three generator batches can be alive
    at once (one being generated, one queued, one being written) and share the rest. Neither goes
    above the batch sizes the user asked for, nor below 2 frames, whatever the resolution.
    """
    frame_bytes = max(1, width * height * 3)
    budget = max(1.0, budget_mb) * 2**20
    decode = int(min(max(face_det_batch_size, 2), max(2, budget // (8 * frame_bytes))))
    generator = int(min(wav2lip_batch_size, max(2, (budget * 7 / 8) // (HELD_BATCHES * frame_bytes))))
    return BatchPlan(frame_bytes, min(generator, wav2lip_batch_size), decode, WRITER_QUEUE, HELD_BATCHES)


def chunk_sizes(count: int, chunk: int) -> list[int]:
    """Near-equal parts of ``count``, each at most ``chunk`` where possible and never 1 unless ``count`` is.

    A lone face runs a different CPU convolution path than a batch (its low bits differ), so a
    remainder of one is folded into the part before it.
    """
    if count <= chunk:
        return [count] if count else []
    parts = min(-(-count // chunk), count // 2)
    base, extra = divmod(count, parts)
    return [base + 1] * extra + [base] * (parts - extra)
