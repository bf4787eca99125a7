"""The execution model's pieces on CPU tensors: hand-offs, byte budgets, the writer thread."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from wav2lip_trt.execution import (
    DeviceContext, FinishedBatch, PinnedSlab, ReadyBatch, Readback, WriterThread, pinned_bytes, plan_batches,
)
from wav2lip_trt.execution.budget import chunk_sizes


class Sink:
    def __init__(self, fail_at: int | None = None, delay: float = 0.0) -> None:
        self.frames: list[np.ndarray] = []
        self.fail_at, self.delay = fail_at, delay
        self.thread_names: set[str] = set()

    def write(self, frame: np.ndarray) -> None:
        self.thread_names.add(threading.current_thread().name)
        if self.fail_at is not None and len(self.frames) == self.fail_at:
            raise OSError("ffmpeg stopped accepting frames")
        time.sleep(self.delay)
        self.frames.append(frame.copy())


def batch_of(first: int, count: int, released: list[int] | None = None) -> FinishedBatch:
    frames = [np.full((2, 3, 3), first + k, np.uint8) for k in range(count)]
    release = (lambda: released.append(first)) if released is not None else (lambda: None)
    return FinishedBatch(first, frames, release)


def test_ready_batch_on_the_cpu_is_the_tensor() -> None:
    t = torch.arange(6)
    assert ReadyBatch(t).wait(None) is t and ReadyBatch(t).synchronize() is t


def test_context_on_the_cpu_copies_to_the_host_buffer() -> None:
    ctx = DeviceContext(torch.device("cpu"))
    assert ctx.compute is None and ctx.copy is None and not ctx.is_cuda
    src = torch.arange(24, dtype=torch.uint8).reshape(2, 2, 2, 3)
    out = torch.empty_like(src)
    ready = ctx.to_host(src, out)
    assert ready.ready is None and ready.tensor is out and torch.equal(out, src)


def test_slab_cuts_disjoint_buffers_of_exactly_the_bytes_asked_for() -> None:
    slab = PinnedSlab(2 * 4 * 3 * 5 * 3 + 7, pin=False)
    assert slab.nbytes == 2 * 4 * 3 * 5 * 3 + 7 and not slab.pinned  # no rounding to a power of two
    a, b = slab.buffers(2, (4, 3, 5, 3))
    assert a.shape == b.shape == (4, 3, 5, 3)
    assert a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr() == slab.tensor.data_ptr()  # one block
    assert b.data_ptr() - a.data_ptr() == 4 * 3 * 5 * 3  # back to back
    a.fill_(1)
    b.fill_(2)
    assert int(slab.tensor[: a.numel()].sum()) == a.numel() and int(slab.tensor[a.numel() : 2 * a.numel()].min()) == 2
    with pytest.raises(ValueError, match="the slab has"):
        slab.buffers(3, (4, 3, 5, 3))
    slab.close()
    assert pinned_bytes()["slabs"] == 0  # nothing was pinned on the CPU


def test_slabs_never_share_a_page() -> None:
    """cudaHostRegister refuses a page registered twice: each slab is a page-aligned mapping of its own,
    also under bound_allocator's policy, where heap blocks would sit back to back."""
    import mmap

    from wav2lip_trt.execution.memory import bound_allocator

    bound_allocator()
    slabs = [PinnedSlab(10_000_001 + k, pin=False) for k in range(3)]
    pages = [(s.tensor.data_ptr() // mmap.PAGESIZE, (s.tensor.data_ptr() + s.nbytes - 1) // mmap.PAGESIZE)
             for s in slabs]
    assert all(s.tensor.data_ptr() % mmap.PAGESIZE == 0 for s in slabs)
    for i, (first, last) in enumerate(pages):
        for other_first, other_last in pages[i + 1 :]:
            assert last < other_first or other_last < first


def test_readback_on_the_cpu_gives_the_batch_in_chunks() -> None:
    ctx = DeviceContext(torch.device("cpu"))
    frames = torch.arange(7 * 2 * 3 * 3, dtype=torch.int64).remainder(251).to(torch.uint8).reshape(7, 2, 3, 3)
    readback = Readback(ctx, 3, (2, 3, 3))
    ready = ctx.finished(frames)
    assert ready.ready is None and ready.tensor is frames
    chunks = [c.copy() for c in readback.chunks(ready)]
    assert [len(c) for c in chunks] == [3, 3, 1]
    np.testing.assert_array_equal(np.concatenate(chunks), frames.numpy())
    whole = readback.all(ready)
    np.testing.assert_array_equal(whole, frames.numpy())
    assert not np.shares_memory(whole, frames.numpy())


def test_writer_reads_a_device_style_batch_back_in_chunks() -> None:
    ctx = DeviceContext(torch.device("cpu"))
    readback = Readback(ctx, 4, (2, 3, 3))
    sink, busy = Sink(), []
    with WriterThread(sink, depth=1, busy=lambda seconds, count: busy.append(count)) as writer:
        for first in range(0, 20, 10):
            frames = torch.stack([torch.full((2, 3, 3), first + k, dtype=torch.uint8) for k in range(10)])
            writer.put(FinishedBatch(first, ctx.finished(frames), readback=readback))
    assert [int(f[0, 0, 0]) for f in sink.frames] == list(range(20)) and busy == [10, 10]


def test_a_failed_writer_sets_stop_for_whoever_waits_on_it() -> None:
    stop = threading.Event()
    with pytest.raises(OSError, match="stopped accepting"):
        with WriterThread(Sink(fail_at=1), depth=1, stop=stop) as writer:
            writer.put(batch_of(0, 3))
            assert stop.wait(5)  # set by the worker when it failed, before the producer learns of it
            writer.put(batch_of(3, 3))


def test_writer_keeps_order_reports_every_frame_and_releases_buffers() -> None:
    sink, released, progress = Sink(delay=0.001), [], []
    saved: list[int] = []
    with WriterThread(sink, depth=1, on_frame=progress.append, extra=lambda i, f: saved.append(i)) as writer:
        for first in range(0, 30, 5):
            writer.put(batch_of(first, 5, released))
    assert [int(f[0, 0, 0]) for f in sink.frames] == list(range(30))
    assert progress == list(range(1, 31))  # per frame, not per batch
    assert saved == list(range(30)) and released == list(range(0, 30, 5))
    assert sink.thread_names == {"wav2lip-trt-writer"}


def test_writer_queue_is_bounded() -> None:
    sink = Sink(delay=0.05)
    with WriterThread(sink, depth=1) as writer:
        start = time.perf_counter()
        for first in range(4):
            writer.put(batch_of(first, 1))
        # one written, one queued: the producer had to wait for the slow sink
        assert time.perf_counter() - start >= 0.05
    assert len(sink.frames) == 4


def test_writer_error_reaches_the_producer_and_buffers_still_come_back() -> None:
    sink, released = Sink(fail_at=7), []
    with pytest.raises(OSError, match="stopped accepting"):
        with WriterThread(sink, depth=1) as writer:
            for first in range(0, 100, 5):
                writer.put(batch_of(first, 5, released))
    assert len(sink.frames) == 7
    time.sleep(0.2)
    # every batch handed over came back exactly once: written, drained, or refused by put
    assert sorted(released) == list(range(0, 5 * len(released), 5)) and len(released) >= 3


def test_writer_error_at_the_last_batch_is_raised_on_exit() -> None:
    with pytest.raises(OSError):
        with WriterThread(Sink(fail_at=2), depth=4) as writer:
            writer.put(batch_of(0, 3))


def test_producer_error_stops_the_writer_without_writing_the_rest() -> None:
    sink, released = Sink(delay=0.02), []
    with pytest.raises(KeyboardInterrupt):
        with WriterThread(sink, depth=2) as writer:
            for first in range(0, 40, 4):
                writer.put(batch_of(first, 4, released))
                if first == 8:
                    raise KeyboardInterrupt
    time.sleep(0.3)
    assert len(sink.frames) < 40
    assert not any(t.name == "wav2lip-trt-writer" for t in threading.enumerate())
    assert sorted(released) == [0, 4, 8]


@pytest.mark.parametrize(("width", "height", "budget", "expect_batch", "expect_ahead"), [
    (320, 240, 256, 128, 16),  # small frames: the original's batches
    (1280, 720, 256, 28, 12),
    (1920, 1080, 256, 12, 5),
    (3840, 2160, 256, 3, 2),
    (7680, 4320, 256, 2, 2),  # never below 2 frames
    (1280, 720, 4096, 128, 16),  # never above what the user asked for
])
def test_plan_divides_the_budget_by_frame_bytes(width, height, budget, expect_batch, expect_ahead) -> None:
    plan = plan_batches(width, height, budget_mb=budget, wav2lip_batch_size=128, face_det_batch_size=16)
    assert (plan.generator_batch, plan.decode_ahead) == (expect_batch, expect_ahead)
    held = plan.buffers * plan.generator_batch + plan.decode_ahead
    assert held * plan.frame_bytes <= budget * 2**20 or 2 in (plan.generator_batch, plan.decode_ahead)


def test_chunk_sizes_never_leave_a_lone_face() -> None:
    assert chunk_sizes(0, 8) == [] and chunk_sizes(1, 8) == [1] and chunk_sizes(5, 8) == [5]
    assert chunk_sizes(128, 30) == [26, 26, 26, 25, 25]
    assert chunk_sizes(33, 16) == [11, 11, 11]
    assert chunk_sizes(3, 2) == [3]  # 2 + 1 would leave one face alone
    for count in range(2, 200):
        for chunk in range(2, 40):
            sizes = chunk_sizes(count, chunk)
            assert sum(sizes) == count and min(sizes) >= 2 and max(sizes) - min(sizes) <= 1
            assert max(sizes) <= chunk or len(sizes) == count // 2


@pytest.mark.gpu
def test_a_slow_upload_in_another_thread_is_complete_before_the_consumer_reads_it() -> None:
    """The race the hand-off closes: an upload on the copy stream, read on the compute stream."""
    from wav2lip_trt.stages import prefetch

    copy, compute = torch.cuda.Stream(), torch.cuda.Stream()
    host = [torch.randint(0, 255, (16, 1080, 1920, 3), dtype=torch.uint8).pin_memory() for _ in range(3)]

    def produce():
        for h in host:
            with torch.cuda.stream(copy):
                torch.cuda._sleep(20_000_000)  # the copy stream lags far behind the consumer
                dev = torch.empty(h.shape, dtype=h.dtype, device="cuda")
                dev.copy_(h, non_blocking=True)
                event = torch.cuda.Event()
                event.record(copy)
            yield ReadyBatch(dev, event)

    sums = []
    for batch in prefetch(produce(), 1, "decode"):  # produced in a worker thread, as the decoder does
        frames = batch.wait(compute)
        with torch.cuda.stream(compute):
            sums.append(frames.to(torch.int64).sum())
    compute.synchronize()
    assert [int(s) for s in sums] == [int(h.to(torch.int64).sum()) for h in host]


def _made_late_on_compute(ctx: DeviceContext, expected: torch.Tensor) -> torch.Tensor:
    """``expected`` on the device, written by the compute stream only after it has slept ~50 ms (zeros before):
    a reader that does not wait for the compute stream sees zeros."""
    source = expected.pin_memory()
    with ctx.on_compute():
        frames = torch.zeros(expected.shape, dtype=expected.dtype, device=ctx.device)
        torch.cuda._sleep(100_000_000)
        frames.copy_(source, non_blocking=True)
    return frames


@pytest.mark.gpu
def test_finished_frames_are_read_back_in_the_writer_thread_after_the_compute_stream() -> None:
    """Everything on the run's streams, nothing on the default stream: the frames are made on the compute
    stream, handed over with its event, and read back on the readback stream from the writer thread."""
    ctx = DeviceContext(torch.device("cuda"))
    expected = torch.randint(0, 255, (12, 720, 1280, 3), dtype=torch.uint8)
    frames = _made_late_on_compute(ctx, expected)
    readback = Readback(ctx, 5, (720, 1280, 3))
    sink = Sink()
    with WriterThread(sink, depth=1) as writer:
        writer.put(FinishedBatch(0, ctx.finished(frames), readback=readback))
        del frames  # the writer's reference keeps it; record_stream keeps the allocator off it until read
    np.testing.assert_array_equal(np.stack(sink.frames), expected.numpy())
    assert sink.thread_names == {"wav2lip-trt-writer"}
    readback.close()


@pytest.mark.gpu
def test_readback_does_not_queue_behind_the_next_batch() -> None:
    """The finished batch's copy runs on the readback stream, so it completes while the compute stream is
    still busy with later work (on the compute stream it would wait for it)."""
    ctx = DeviceContext(torch.device("cuda"))
    expected = torch.randint(0, 255, (8, 1080, 1920, 3), dtype=torch.uint8)
    frames = _made_late_on_compute(ctx, expected)
    ready = ctx.finished(frames)
    with ctx.on_compute():
        torch.cuda._sleep(4_000_000_000)  # the next batch: about two seconds of kernels
    readback = Readback(ctx, 8, (1080, 1920, 3))
    got = np.concatenate([chunk.copy() for chunk in readback.chunks(ready)])
    assert not ctx.compute.query()  # the compute stream is still busy: the copy did not wait for it
    np.testing.assert_array_equal(got, expected.numpy())
    ctx.compute.synchronize()
    readback.close()


@pytest.mark.gpu
def test_slab_pins_exactly_its_bytes_outside_torchs_pool_and_unpins() -> None:
    nbytes = 3 * 1080 * 1920 * 3 + 1  # torch's pool would round this up to 32 MiB
    before, torch_before = pinned_bytes()["slabs"], torch.cuda.host_memory_stats().get("allocated_bytes.current", 0)
    slab = PinnedSlab(nbytes, pin=True)
    (buffer,) = slab.buffers(1, (3, 1080, 1920, 3))
    assert slab.pinned and buffer.is_pinned()
    assert pinned_bytes()["slabs"] == before + nbytes
    assert torch.cuda.host_memory_stats().get("allocated_bytes.current", 0) == torch_before
    device = torch.randint(0, 255, buffer.shape, dtype=torch.uint8, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        buffer.copy_(device, non_blocking=True)
    stream.synchronize()
    assert torch.equal(buffer, device.cpu())
    slab.close()
    assert pinned_bytes()["slabs"] == before and not slab.pinned


@pytest.mark.gpu
def test_device_batch_is_sized_by_the_gpu_not_the_host_budget() -> None:
    ctx = DeviceContext(torch.device("cuda"))
    total = torch.cuda.get_device_properties(ctx.device).total_memory
    assert ctx.device_batch(1920 * 1080 * 3, 128) == min(128, int(total * 0.25) // (3 * 1920 * 1080 * 3))
    assert ctx.device_batch(1920 * 1080 * 3, 128) > plan_batches(1920, 1080).generator_batch  # 12 on the host
    assert ctx.device_batch(1 << 40, 128) == 2  # never fewer than two


def test_device_batch_is_for_cuda_runs_only() -> None:
    with pytest.raises(ValueError, match="CUDA"):
        DeviceContext(torch.device("cpu")).device_batch(1920 * 1080 * 3, 128)
