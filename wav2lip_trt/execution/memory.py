"""Host memory of a run: recycled frame buffers, and the glibc policy that keeps freed blocks for reuse.

A CPU run allocates the same large blocks over and over: a frame per output frame, the generator's
activations (~11 MB a face, chunks of 16) and S3FD's (hundreds of MB a detection batch) per batch.
Where those blocks come from decides whether the kernel zeroes fresh pages for every batch.

- Frames live in a :class:`HostPool`: the decoder reads into a free buffer, the writer gives it
  back after ffmpeg has it, so the steady state allocates no frames at all.
- Everything else (torch's activations and workspaces, NumPy temporaries) comes from glibc, whose
  defaults serve a block above the mmap threshold (128 KiB, rising to at most 32 MiB as such
  blocks are freed) with a private mapping: unmapped on ``free``, faulted in and zeroed page by
  page on the next batch. :func:`bound_allocator` turns mappings off and trimming down, so a
  freed block stays in the heap and the next batch of the same shape reuses it; the resident
  size is the high-water mark of the process (a long-lived session keeps its largest job's).

Measured with ``/usr/bin/time`` on 2 shared cores (torch 2.13 CPU, glibc 2.36), ``infer --box`` on a
13 s 320x240 clip (325 frames), whole process, on the code before the pools (3ab087a), glibc
settings through ``GLIBC_TUNABLES`` with this function skipped:

==============================================  ===============  =======  ===========
glibc setting                                   faults / frame   sys s    peak RSS MB
==============================================  ===============  =======  ===========
fixed mmap threshold 1 MiB (the old policy)             27,600     14.3          687
glibc's defaults (dynamic threshold, <= 32 MiB)          8,570      5.9          906
mmap threshold 32 MiB + trim threshold max               5,460      3.2          943
mmap max 0 + trim threshold max (this policy)              620      0.6          912
the same + arena max 1                                     670      0.8          974
==============================================  ===============  =======  ===========

At 720p the old policy took 28,350 faults a frame and 14.7 s of system time, this policy 820 and
1.7 s, at 767 and 947 MB peak. At a 32 MiB mmap threshold (the dynamic one's ceiling) the
generator's and S3FD's larger activations still get mappings; a higher threshold would need a
size picked per resolution (S3FD's activations grow with the frame), while ``M_MMAP_MAX`` 0 keeps
every block in the heap with no size to pick. A trim threshold below the activations'
working set (~180 MB for a chunk of 16 faces) would give the top of the heap back after each chunk
and fault it in again. One arena (``M_ARENA_MAX`` 1) fragments more and saves nothing;
``M_TOP_PAD`` (not measured) only sets how far each ``brk`` reaches beyond its request. Torch 2.13's
CPU allocator is plain ``posix_memalign``: its ``CPUCachingAllocator`` is reachable only from C++
(mobile builds), and ``THP_MEM_ALLOC_ENABLE=1`` (not measured) would put large blocks on huge pages,
fewer faults for the same zeroing. The cost is RSS: the heap keeps the run's high-water mark plus
whatever fragmentation the threads' interleaving left, so the peak varies from run to run: with the
pools, 880 MB at 320x240 (703 before) and 845-1,177 MB in three 720p runs (784 before), which can
exceed the 1.0 GB goal of ``benchmarks/test_frame_memory.py`` (it fails at 720p: 1,245 MB); with
the pools and the old 1 MiB threshold that run peaks at 764 MB, so the policy, not the pools, costs it. The pools and this policy together,
before and after side by side: ``benchmarks/page_faults_bench.py`` and benchmarks/README.md.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading
import weakref
from collections.abc import Iterable

import numpy as np

_M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
_M_MMAP_MAX = -4
_NEVER = -1  # as glibc's size_t: never trim the top of the heap
_libc: ctypes.CDLL | None = None
_done = False


def _glibc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None and sys.platform.startswith("linux"):
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name) if name else None
        except OSError:
            libc = None
        if libc is not None and hasattr(libc, "mallopt"):
            libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            _libc = libc
    return _libc


def bound_allocator() -> None:
    """Keep freed blocks in glibc's heap for the next batch instead of unmapping them (see the module doc).

    Process-wide and idempotent; nothing happens where glibc is not the allocator. ``M_MMAP_MAX``
    0 also fixes the mmap threshold, so the dynamic threshold plays no part.
    """
    global _done
    libc = _glibc()
    if _done or libc is None:
        return
    _done = True
    libc.mallopt(_M_MMAP_MAX, 0)
    libc.mallopt(_M_TRIM_THRESHOLD, _NEVER)


class HostPool:
    """Recycled host arrays of one shape: frames that go round decoder -> pipeline -> writer -> decoder.

    :meth:`take` never blocks (a buffer is made when none is free), so a pool cannot stall the
    pipeline; the budget (:func:`~wav2lip_trt.execution.budget.plan_batches`) bounds how many are
    out at once. :meth:`give` takes back only arrays this pool made, and keeps at most ``keep``:
    a frame that came from elsewhere (an image, a caller's array) is left to the garbage collector,
    never handed to the decoder to overwrite. Thread-safe.
    """

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype | type = np.uint8, *, keep: int = 0) -> None:
        self.shape, self.dtype, self.keep = tuple(shape), np.dtype(dtype), keep
        self._free: list[np.ndarray] = []
        self._made: weakref.WeakValueDictionary[int, np.ndarray] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()
        self.made = 0  # arrays ever made: a steady state makes none after the first batches

    def take(self) -> np.ndarray:
        with self._lock:
            if self._free:
                return self._free.pop()
            self.made += 1
            array = np.empty(self.shape, self.dtype)
            self._made[id(array)] = array
            return array

    def give(self, arrays: Iterable[np.ndarray]) -> None:
        """Return arrays to the pool once nothing reads them any more (the writer has written them)."""
        with self._lock:
            for array in arrays:
                if self._made.get(id(array)) is array and len(self._free) < self.keep \
                        and not any(a is array for a in self._free):
                    self._free.append(array)

    def copy(self, array: np.ndarray) -> np.ndarray:
        """``array`` copied into a buffer of the pool."""
        out = self.take()
        np.copyto(out, array)
        return out


class Workspace:
    """Named scratch arrays reused from call to call, grown (never shrunk) when a call needs more.

    ``get(name, shape, dtype)`` is a view of exactly ``shape``, contiguous (a prefix of one flat
    buffer), so results computed into it keep the strides a fresh array would have.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
        dtype = np.dtype(dtype)
        size = int(np.prod(shape)) * dtype.itemsize
        buffer = self._buffers.get(name)
        if buffer is None or buffer.nbytes < size:
            buffer = self._buffers[name] = np.empty(size, np.uint8)
        return buffer[:size].view(dtype).reshape(shape)

