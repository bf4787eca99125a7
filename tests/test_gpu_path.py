"""The GPU path end to end (issue 18 b, d, g): yuv420p from the device, the device-sized generator batch, pinned slabs."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest

from media import decode_frames


@pytest.mark.gpu
def test_frames_converted_on_the_device_encode_like_ffmpegs_conversion(checkpoints, talking_clip, tmp_path) -> None:
    """Without --save-frames the writer gets yuv420p made on the device; with it, BGR that ffmpeg converts.
    Losslessly encoded (crf 0), the two videos differ only by the conversion's one level."""
    from wav2lip_trt.execution import pinned_bytes
    from wav2lip_trt.session import Session

    face, audio = talking_clip
    with Session(checkpoints[0], None, device="cuda", precision="fp32") as session:
        common = dict(box=(10, 110, 20, 140), crf=0, frame_memory=8)  # the host plan: 39 frames a batch
        session.infer(face, audio, tmp_path / "yuv.mp4", **common)
        session.infer(face, audio, tmp_path / "bgr.mp4", save_frames=tmp_path / "frames", **common)
        assert session.generator.graph_batch == 128  # not the host plan's 39
    yuv, bgr = decode_frames(tmp_path / "yuv.mp4"), decode_frames(tmp_path / "bgr.mp4")
    assert yuv.shape == bgr.shape
    diff = np.abs(yuv.astype(int) - bgr)
    assert diff.mean() < 0.1 and diff.max() <= 4
    gc.collect()
    assert pinned_bytes()["slabs"] == 0  # the decode and readback rings are unpinned after the runs


@pytest.mark.gpu
def test_the_readback_ring_holds_two_chunks_of_the_host_plan(checkpoints, talking_clip, tmp_path: Path) -> None:
    """The host holds what --frame-memory plans (two readback chunks, the decode ring), whatever the device batch."""
    import torch

    from wav2lip_trt.execution import DeviceContext, Readback, pinned_bytes

    ctx = DeviceContext(torch.device("cuda"))
    with ctx.on_compute():  # made on the compute stream, as the pipeline makes finished frames
        frames = torch.full((128, 1080, 1920, 3), 7, dtype=torch.uint8, device="cuda")
    readback = Readback(ctx, 12, (1080, 1920, 3))
    before = pinned_bytes()["slabs"]
    sizes = []
    for chunk in readback.chunks(ctx.finished(frames)):
        assert (chunk == 7).all()
        sizes.append(len(chunk))
    assert sizes == [12] * 10 + [8]
    assert pinned_bytes()["slabs"] - before == 2 * 12 * 1080 * 1920 * 3
    readback.close()
    assert pinned_bytes()["slabs"] == before


def test_the_device_path_with_yuv_output_runs_on_the_cpu_too(checkpoints, tmp_path: Path) -> None:
    """The GPU path's plumbing on CPU tensors: decoder batches, kernels, yuv420p made by the device ops, read back
    in chunks of 3 (batches of 4 and 3) by the writer thread into a yuv420p VideoWriter; the video equals the BGR run's within the
    conversion's one level."""
    import torch

    from wav2lip_trt.audio import MelChunks, melspectrogram
    from wav2lip_trt.checkpoints import load_wav2lip
    from wav2lip_trt.decode import OpenCVDecoder
    from wav2lip_trt.encode import VideoWriter
    from wav2lip_trt.execution import WriterThread
    from wav2lip_trt.frame_ops import DeviceOps
    from wav2lip_trt.options import InferenceOptions
    from wav2lip_trt.pipeline import face_items, generate
    from wav2lip_trt.runners.base import WAV2LIP_INPUTS, WAV2LIP_OUTPUTS
    from wav2lip_trt.runners.torch_runner import TorchRunner
    from wav2lip_trt.samples import speechlike_audio, talking_face_frames, write_video
    from wav2lip_trt.video import FaceSource

    video = write_video(tmp_path / "face.mp4", talking_face_frames(10, 128, 96, seed=2), 25.0)
    chunks = MelChunks(melspectrogram(speechlike_audio(0.4, seed=7)), 25.0)
    wav2lip = TorchRunner(load_wav2lip(checkpoints[0]), WAV2LIP_INPUTS, WAV2LIP_OUTPUTS)
    options = InferenceOptions(checkpoint_path=checkpoints[0], face=video, audio=video, box=(10, 90, 20, 110))
    cpu = torch.device("cpu")
    for yuv in (False, True):
        source = FaceSource(video)
        ops = DeviceOps(chunks, cpu, decoder=OpenCVDecoder(source, device=cpu, batch=4), batch_frames=3, yuv=yuv)
        assert ops.pixel_format == ("yuv420p" if yuv else "bgr24")
        batches = generate(face_items(source, len(chunks), options, None, ops), ops, wav2lip, 4, None,
                           reference_batch=4, total=len(chunks))
        with VideoWriter(tmp_path / f"{ops.pixel_format}.mp4", width=128, height=96, fps=25.0, audio=None, crf=0,
                         pixel_format=ops.pixel_format) as writer, WriterThread(writer) as frames_out:
            for batch in batches:
                frames_out.put(batch)
        assert writer.frames_written == len(chunks) == 7  # 0.4 s of audio at 25 fps
    bgr, yuv420 = decode_frames(tmp_path / "bgr24.mp4"), decode_frames(tmp_path / "yuv420p.mp4")
    diff = np.abs(bgr.astype(int) - yuv420)
    assert bgr.shape == yuv420.shape == (7, 96, 128, 3) and diff.mean() < 0.1 and diff.max() <= 4


@pytest.mark.gpu
def test_a_failed_run_unpins_its_readback_ring_when_it_ends(checkpoints, talking_clip, tmp_path: Path) -> None:
    """The readback ring is unpinned when the run ends (after its writer thread), not when its objects are
    collected: a failure's traceback, kept by the caller, holds the run's frame and its frame ops."""
    import time

    from wav2lip_trt.execution import pinned_bytes
    from wav2lip_trt.session import Session

    face, audio = talking_clip

    def fail(done: int) -> None:
        if done > 8:
            time.sleep(0.5)  # the writer has read back the first batches: the ring is pinned
            raise RuntimeError("stopped by the test")

    with Session(checkpoints[0], None, device="cuda", precision="fp32") as session:
        before = pinned_bytes()["slabs"]
        with pytest.raises(RuntimeError, match="stopped by the test") as info:
            session.infer(face, audio, tmp_path / "x.mp4", box=(10, 110, 20, 140), wav2lip_batch_size=4, on_frame=fail)
        assert info.traceback and pinned_bytes()["slabs"] == before
    assert not (tmp_path / "x.mp4").exists()
