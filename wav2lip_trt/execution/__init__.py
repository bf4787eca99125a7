"""How a run uses threads, CUDA streams and memory: the one execution model of the pipeline.

Threads (every hand-off is a bounded queue, so a slow stage stalls the ones before it):

- **decode** (worker): reads frames (OpenCV, or DALI on a GPU). On a GPU it enqueues each batch's
  upload on the decoder's own *copy* stream from a ring of pinned slots (one :class:`PinnedSlab`)
  and records an event after it; the batch travels as a :class:`ReadyBatch` (tensor + event). A
  slot is refilled only after its previous upload's event has completed.
- **pipeline** (the caller's thread): detection (S3FD and the kernels around it) and generation
  (crop, Wav2Lip, paste-back), all on the single *compute* stream of the run's
  :class:`DeviceContext`. Before it touches a decoded batch, the compute stream waits on the
  batch's event and the tensor is ``record_stream``-ed to it, so the caching allocator cannot hand
  the memory to the copy stream while the compute stream still reads it. A finished batch (BGR,
  or ``yuv420p`` converted on the compute stream when nothing needs BGR frames on the host) is
  handed over on the device with an event recorded on the compute stream after it
  (:meth:`DeviceContext.finished`); the pipeline thread never waits for it.
- **writer** (worker, :class:`WriterThread`): for a device batch, its :class:`Readback` makes the
  *readback* stream wait on the batch's event, ``record_stream``-s the batch to that stream, and
  copies it out in chunks into a ring of pinned slots (one slab), one chunk ahead of ffmpeg,
  waiting on each chunk's event on the host before reading it. It feeds the frames to ffmpeg
  one by one (the progress bar moves per frame). An error in the writer reaches the pipeline
  thread at its next hand-off and at the end; an error in the pipeline stops the writer.

Streams: the compute stream is created once per run and handed to the runners when they are built
(``RunnerRequest.stream``); the copy stream belongs to the decoder, the readback stream to the
writer (uploads and readbacks use the GPU's two copy engines; neither queues behind the other or
behind the next batch's kernels). No code reads
``torch.cuda.current_stream()`` to decide where work goes, and nothing runs on the legacy default
stream: where a library launches on "the current stream" (Triton, torch ops) the caller enters
``torch.cuda.stream(ctx.compute)`` explicitly around that stage. S3FD needs its boxes on the host
for smoothing, so detection ends in one explicit event wait per batch (a small pinned copy of the
packed boxes); that is the only place the pipeline thread waits for the GPU. One stream for both
networks is deliberate: S3FD at 1080p fills an H100 by itself, and the overlap that pays is
between host work (decode, encode, Python) and GPU work.

CUDA graphs: only Wav2Lip, at the run's fixed generator batch (a shorter tail batch is padded to
it), captured once on the compute stream under a process-wide lock in ``thread_local`` capture
mode; never S3FD (one graph per frame size, each with a private memory pool).

Memory: frames in flight are bounded by bytes, not by count. :func:`plan_batches` turns the
``--frame-memory`` budget into the host's share: the generator batch of the CPU path, the decode
look-ahead, the writer queue and the readback chunk. On a GPU the generator batch is sized for
the device instead (:meth:`DeviceContext.device_batch`: three batches within a quarter of the
GPU's memory, at most ``--wav2lip_batch_size``), since its frames live there; the host still
holds only the decode ring and two readback chunks. Pinned host memory comes in exact-size slabs
(:class:`PinnedSlab`, not torch's power-of-two pool); :func:`pinned_bytes` reports it.
"""

from .budget import DEFAULT_FRAME_MEMORY_MB, BatchPlan, plan_batches
from .context import DeviceContext, Readback
from .handoff import PinnedSlab, ReadyBatch, on_stream, pinned_bytes
from .writer import FinishedBatch, WriterThread

__all__ = [
    "DEFAULT_FRAME_MEMORY_MB",
    "BatchPlan",
    "DeviceContext",
    "FinishedBatch",
    "PinnedSlab",
    "Readback",
    "ReadyBatch",
    "WriterThread",
    "on_stream",
    "pinned_bytes",
    "plan_batches",
]
