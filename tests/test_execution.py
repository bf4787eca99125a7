"""The execution model's pieces on CPU tensors: hand-offs, byte budgets, the writer thread."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from wav2lip_trt.execution import DeviceContext, FinishedBatch, PinnedPool, ReadyBatch, WriterThread, plan_batches
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


def test_pool_hands_out_at_most_count_buffers_and_reuses_them() -> None:
    pool = PinnedPool(2, 4, 3, 5, pin=False)
    a, release_a = pool.acquire(4)
    b, release_b = pool.acquire(2)
    assert a.shape == (4, 3, 5, 3) and b.shape == (2, 3, 5, 3)
    got: list[torch.Tensor] = []
    waiter = threading.Thread(target=lambda: got.append(pool.acquire(3)[0]))
    waiter.start()
    time.sleep(0.3)
    assert not got  # both buffers are out: the third acquire waits
    release_a()
    waiter.join(2)
    assert got and got[0].data_ptr() == a.data_ptr()  # the same memory, handed out again
    with pytest.raises(ValueError, match="do not fit"):
        pool.acquire(5)
    stop = threading.Event()
    stop.set()
    with pytest.raises(RuntimeError, match="writer stopped"):
        pool.acquire(1, stop)  # every buffer is out and the consumer is gone: no hang
    release_b()


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


@pytest.mark.gpu
def test_finished_frames_come_back_through_one_pinned_copy() -> None:
    ctx = DeviceContext(torch.device("cuda"))
    frames = torch.randint(0, 255, (8, 720, 1280, 3), dtype=torch.uint8, device="cuda")
    pool = ctx.pinned_pool(2, 8, 720, 1280)
    out, release = pool.acquire(8)
    assert out.is_pinned()
    with ctx.on_compute():
        torch.cuda._sleep(20_000_000)
    ready = ctx.to_host(frames, out)
    assert ready.ready is not None
    np.testing.assert_array_equal(ready.synchronize().numpy(), frames.cpu().numpy())
    release()
