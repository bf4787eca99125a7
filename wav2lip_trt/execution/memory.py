"""Host memory of a run: recycled frame buffers, and the glibc policy that keeps freed blocks for reuse.

A CPU run allocates the same large blocks over and over: a frame per output frame, the generator's
activations (~11 MB a face, chunks of 8) and S3FD's (hundreds of MB a detection batch) per batch.
Where those blocks come from decides whether the kernel zeroes fresh pages for every batch.

- Frames live in a :class:`HostPool`, the batch buffers around the generator in a
  :class:`Workspace`; both are anonymous mappings of their own (:func:`mapped`), made once and
  reused, so the steady state allocates no frames and the heap never holds them.
- Everything else (torch's activations and workspaces, NumPy temporaries) comes from glibc, whose
  defaults serve a block above the mmap threshold (128 KiB, rising to at most 32 MiB as such
  blocks are freed) with a private mapping: unmapped on ``free``, faulted in and zeroed page by
  page on the next batch. :func:`bound_allocator` turns mappings off and trimming down, so a
  freed block stays in the heap and the next batch of the same shape reuses it; the resident
  size is the heap's high-water mark (a long-lived session keeps its largest job's).

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

The price of keeping blocks is fragmentation, and it showed at 720p. With the pools in the heap
and chunks of 16, ``infer --box`` on a 160-frame 720p clip peaked at 845-1,315 MB from run to run
(goal 1.0 GB). ``mallinfo2``/``malloc_info`` sampled in the run: the main arena held 540-930 MB
of which 250-440 MB were in use (the other arenas, one per thread, under 10 MB each, so
``M_ARENA_MAX`` is not the lever); a trace of the blocks of 1 MiB or more (``LD_PRELOAD``) had at
most 290 MB of them alive at once, while the top of the heap climbed ~17 MB a chunk: the same
sequence of activations placed higher each time, pinned by blocks that lived across chunks (frames
and workspaces allocated between activations, each chunk's prediction held until the next had
run) and by chunks of other face counts (a batch of 25 runs as 13 + 12, the last batch as 16).
What each change did, same 160-frame 720p ``--box`` run, whole process (``wait4``), one line per
run, this policy throughout unless said:

===================================================================  ===================  ===================
code                                                                 peak RSS MB          faults / frame (job)
===================================================================  ===================  ===================
before (4dde4fe: pools in the heap, chunks of 16)                    1,091; 1,315         2,022 (1,014)
pools and workspaces in their own mappings                           921; 1,127; 932      1,618-2,130
+ predictions copied out per chunk, chunks padded to the run's one   1,035; 934; 966      1,684-1,905
+ chunks of 8 faces (this code)                                      764; 801; 836; 893   1,444-1,657 (507-708)
the same without the padding                                         805; 909             1,496-1,808
chunks of 16 padded to 16                                            956; 960             1,777-1,823
``malloc_trim(0)`` before every batch (chunks of 16)                 908; 920             3,813 (2,810)
before, + ``M_ARENA_MAX`` 1 / 2                                      902 / 1,091          1,718 / 1,998
before, mmap threshold 32 / 64 MiB (mapped above) + trim max         990 / 857            1,823 / 1,536
===================================================================  ===================  ===================

(Whole-process faults a frame include imports, model loading and ffmpeg over 160 frames; the job's
own in brackets. 13 s runs: benchmarks/README.md.) Trimming gives the holes back but the next
batch faults them in again; a finite mmap threshold maps the largest activations again. Chunks of
8 halve the activations (no slower on 2 cores: 48 faces in 1.7 s as 8s, 2.0 s as 16s, min of
three, bit-identical) and, padded to one shape, every chunk reuses the same blocks. ``M_TOP_PAD``
(not measured) only sets how far each ``brk`` reaches beyond its request. Torch 2.13's CPU
allocator is plain ``posix_memalign``: its ``CPUCachingAllocator`` is reachable only from C++
(mobile builds). The pools and this policy together, before and after side by side:
``benchmarks/page_faults_bench.py`` and benchmarks/README.md.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
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


def mapped(shape: tuple[int, ...], dtype: np.dtype | type = np.uint8) -> np.ndarray:
    """An array in its own anonymous mapping, outside glibc's heap, unmapped when the last view of it goes.

    For long-lived recycled buffers (pooled frames, workspaces): in the heap they would sit among
    the activations that come and go with every batch and pin the holes between them (see the
    module doc); mapped, the heap holds only what a batch frees and reuses.
    """
    dtype = np.dtype(dtype)
    count = int(np.prod(shape))
    if count * dtype.itemsize == 0:
        return np.empty(shape, dtype)
    return np.frombuffer(mmap.mmap(-1, count * dtype.itemsize), dtype, count).reshape(shape)


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
            array = mapped(self.shape, self.dtype)
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
            buffer = self._buffers[name] = mapped((size,))
        return buffer[:size].view(dtype).reshape(shape)

