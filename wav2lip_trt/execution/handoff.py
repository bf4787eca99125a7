"""The hand-off objects: a tensor travels between threads and streams only with its ready event."""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from dataclasses import dataclass

import numpy as np
import torch

from .memory import mapped


STALL_ENV = "WAV2LIP_TRT_TEST_STALL_US"
"""Test-only (gpu-check's determinism step): microseconds of GPU sleep enqueued on the producer's stream
before each hand-off, with one ring slot and one pool buffer, so that a missing wait changes the frames."""


def stall(stream: "torch.cuda.Stream | None") -> None:
    """Widen the race window before a hand-off when :data:`STALL_ENV` is set; nothing otherwise."""
    micros = int(os.environ.get(STALL_ENV) or 0)
    if micros > 0 and stream is not None:
        with torch.cuda.stream(stream):
            torch.cuda._sleep(micros * 2000)  # cycles: about 2 GHz, so at least ``micros`` on an H100/H200


def smallest(count: int) -> int:
    """``count`` ring slots or pool buffers, or 1 while :data:`STALL_ENV` widens the race windows."""
    return 1 if int(os.environ.get(STALL_ENV) or 0) > 0 else count


def on_stream(stream: "torch.cuda.Stream | None") -> contextlib.AbstractContextManager[object]:
    """``stream`` current in this thread for the block (so its launches land there); None (the CPU): nothing."""
    return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()


@dataclass
class ReadyBatch:
    """A tensor and the event after which it may be read.

    ``ready`` is None when the tensor is usable as it is (host memory written by the host, or
    device memory produced on the stream that will use it).
    """

    tensor: torch.Tensor
    ready: "torch.cuda.Event | None" = None

    def wait(self, stream: "torch.cuda.Stream | None") -> torch.Tensor:
        """Order ``stream``'s later work after the producer's, and tie the memory to ``stream``.

        Enqueues a wait; never blocks the calling thread. ``record_stream`` keeps the caching
        allocator from reusing the block (allocated on the producer's stream) before ``stream``
        is done with it.
        """
        if stream is not None and self.tensor.is_cuda:
            if self.ready is not None:
                stream.wait_event(self.ready)
            self.tensor.record_stream(stream)
        return self.tensor

    def synchronize(self) -> torch.Tensor:
        """Block the calling thread until the tensor may be read on the host."""
        if self.ready is not None:
            self.ready.synchronize()
        return self.tensor


_HOST_REGISTER_PORTABLE = 1  # cudaHostRegisterPortable


class PinnedSlab:
    """One block of host memory, page-locked on CUDA, that its owner slices instead of allocating.

    torch's pinned allocator (``pin_memory=True``) rounds every request up to a power of two and
    keeps the blocks for the life of the process, so pinned buffers could take twice what the
    ``--frame-memory`` plan allows and never come back. A slab pins exactly ``nbytes`` of ordinary
    host memory (``cudaHostRegister``), is cut into the buffers its owner needs, and is unpinned by
    :meth:`close` (or when it is collected). Without ``pin`` (the CPU) it is plain memory. The
    memory is a mapping of its own (:func:`~wav2lip_trt.execution.memory.mapped`): from glibc's
    heap (where ``bound_allocator`` puts every block) two live slabs could share a page, and CUDA
    refuses to register a page twice.
    """

    def __init__(self, nbytes: int, *, pin: bool) -> None:
        self.nbytes = max(1, int(nbytes))
        self.tensor = torch.from_numpy(mapped((self.nbytes,)))
        self.pinned = False
        self._finalizer: weakref.finalize | None = None
        if pin:
            pointer = self.tensor.data_ptr()
            # portable: pinned for every device's context, whichever thread (and current device) registers it
            error = int(torch.cuda.cudart().cudaHostRegister(pointer, self.nbytes, _HOST_REGISTER_PORTABLE))
            if error != 0:
                raise RuntimeError(f"cudaHostRegister of {self.nbytes} bytes failed with CUDA error {error}")
            self.pinned = True
            _count_pinned(self.nbytes)
            self._finalizer = weakref.finalize(self, _unpin, pointer, self.nbytes)  # before the memory is freed

    def buffers(self, count: int, shape: tuple[int, ...]) -> list[torch.Tensor]:
        """``count`` disjoint uint8 tensors of ``shape`` cut from the start of the slab."""
        size = int(np.prod(shape))
        if count * size > self.nbytes:
            raise ValueError(f"{count} buffers of {shape} need {count * size} bytes; the slab has {self.nbytes}")
        return [self.tensor[k * size : (k + 1) * size].view(shape) for k in range(count)]

    def close(self) -> None:
        """Unpin now (the caller has waited for every copy that reads or writes the slab)."""
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
            self.pinned = False


_pinned_lock = threading.Lock()
_pinned = [0, 0]  # slab bytes pinned now, and the most at any time


def _count_pinned(nbytes: int) -> None:
    with _pinned_lock:
        _pinned[0] += nbytes
        _pinned[1] = max(_pinned[1], _pinned[0])


def _unpin(pointer: int, nbytes: int) -> None:
    torch.cuda.cudart().cudaHostUnregister(pointer)
    _count_pinned(-nbytes)


def pinned_bytes() -> dict[str, int]:
    """Page-locked host memory of this process: the slabs (now and at most) and torch's own pinned pool.

    torch's pool serves the small per-batch uploads (boxes, chunk starts) and anything else pinned
    with ``pin_memory()``; its bytes are counted as torch rounds them (powers of two).
    """
    torch_pool = 0
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        try:
            torch_pool = int(torch.cuda.host_memory_stats().get("allocated_bytes.current", 0))
        except (AttributeError, RuntimeError):
            torch_pool = 0
    with _pinned_lock:
        return {"slabs": _pinned[0], "slabs_peak": _pinned[1], "torch_pool": torch_pool}


def upload(array: np.ndarray | torch.Tensor, device: torch.device, stream: "torch.cuda.Stream | None") -> torch.Tensor:
    """Small per-batch parameters (boxes, chunk starts) to ``device`` without blocking the thread.

    On CUDA: pinned staging, then a non-blocking copy enqueued on ``stream``; the staging buffer is
    held by torch's host allocator until the copy has run. Elsewhere: the tensor itself.
    """
    host = torch.as_tensor(array)
    if device.type != "cuda":
        return host.to(device)
    assert stream is not None, "a CUDA upload needs the stream it is ordered on"
    with torch.cuda.stream(stream):
        staged = host.pin_memory()
        stall(stream)
        return staged.to(device, non_blocking=True)
