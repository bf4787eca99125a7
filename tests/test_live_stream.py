"""A live stream of an avatar gives infer's frames bit for bit (torch CPU), whatever the audio chunking."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from wav2lip_trt.audio import load_audio
from wav2lip_trt.errors import InputError
from wav2lip_trt.live.avatar import AvatarError, load_avatar
from wav2lip_trt.live.stream import run_stream
from wav2lip_trt.samples import float_to_int16, speechlike_audio, talking_face_frames, write_video, write_wav
from wav2lip_trt.session import Session

FPS = 25.0


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    """A 10-frame face (video, PNG folder, one image), 6 frames forwards then backwards, and 0.7 s of speech.

    The audio (15 frames) outlasts the video and the 12-position ping-pong, so infer smooths the boxes
    over the whole loop as the avatar does."""
    d = tmp_path_factory.mktemp("live")
    frames = list(talking_face_frames(10, 128, 96, seed=4))
    folder, six, pingpong = d / "frames", d / "six", d / "pingpong"
    for sub, pictures in ((folder, frames), (six, frames[:6]), (pingpong, frames[:6] + frames[5::-1])):
        sub.mkdir()
        for i, frame in enumerate(pictures):
            cv2.imwrite(str(sub / f"f{i:03d}.png"), frame)
    cv2.imwrite(str(d / "face.png"), frames[3])
    return {
        "video": write_video(d / "face.mp4", frames, FPS),
        "folder": folder, "six": six, "pingpong": pingpong, "image": d / "face.png",
        "audio": write_wav(d / "speech.wav", float_to_int16(speechlike_audio(0.7, seed=11)), 16000),
    }


@pytest.fixture(scope="module")
def session(checkpoints):
    with Session(checkpoints[0], checkpoints[1], device="cpu") as s:
        yield s


def infer_frames(session: Session, face: Path, audio: Path, tmp: Path, **options) -> np.ndarray:
    session.infer(face, audio, tmp / "offline.mp4", dump_intermediates=tmp / "dump", **options)
    return np.load(tmp / "dump" / "frames.npy")


def chunks_of(wav: np.ndarray, mode: str, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    if mode == "big":
        return [wav]
    sizes = {"one": lambda: 1, "random": lambda: int(rng.integers(1, 4000))}[mode]
    out, pos = [], 0
    while pos < len(wav):
        size = sizes()
        out.append(wav[pos : pos + size])
        pos += size
    return out


def assert_same(streamed, expected: np.ndarray) -> None:
    assert [f.index for f in streamed] == list(range(len(expected)))
    for f in streamed:
        assert f.pts == f.index / FPS
        assert np.array_equal(f.image, expected[f.index]), f"frame {f.index} differs"


def test_video_avatar_equals_infer_for_any_chunking(session, media, tmp_path) -> None:
    expected = infer_frames(session, media["video"], media["audio"], tmp_path)
    assert len(expected) > 10  # the audio outlasts the video: frames loop forward
    avatar = session.avatar(media["video"], tmp_path / "avatar")
    wav = load_audio(media["audio"])
    for mode in ("big", "random", "one"):
        assert_same(run_stream(session, load_avatar(tmp_path / "avatar"), chunks_of(wav, mode, seed=3)), expected)
    assert len(avatar) == 10 and avatar.loop == "forward"


def test_image_avatar_equals_infer(session, media, tmp_path) -> None:
    expected = infer_frames(session, media["image"], media["audio"], tmp_path)
    avatar = session.avatar(media["image"], fps=FPS)
    assert len(avatar) == 1
    assert_same(run_stream(session, avatar, chunks_of(load_audio(media["audio"]), "random", seed=5)), expected)


def test_pingpong_equals_infer_on_the_frames_forwards_then_backwards(session, media, tmp_path) -> None:
    expected = infer_frames(session, media["pingpong"], media["audio"], tmp_path, fps=FPS)
    avatar = session.avatar(media["six"], loop="pingpong", fps=FPS)
    assert len(avatar) == 12 and list(avatar.order) == [*range(6), *range(5, -1, -1)]
    assert_same(run_stream(session, avatar, chunks_of(load_audio(media["audio"]), "random", seed=7)), expected)


def test_lone_last_frame_runs_alone_as_in_infer(session, media, tmp_path) -> None:
    """15 frames in batches of 7: infer's last batch is one frame, which takes another CPU path."""
    expected = infer_frames(session, media["folder"], media["audio"], tmp_path, fps=FPS, wav2lip_batch_size=7,
                            box=(20, 90, 30, 100))
    assert len(expected) % 7 == 1
    avatar = session.avatar(media["folder"], fps=FPS, box=(20, 90, 30, 100))
    wav = load_audio(media["audio"])
    assert_same(run_stream(session, avatar, [wav], reference_batch=7), expected)


def test_int16_samples_are_read_like_a_file(session, media) -> None:
    avatar = session.avatar(media["folder"], fps=FPS, box=(20, 90, 30, 100))
    pcm = float_to_int16(speechlike_audio(0.7, seed=11))
    as_int = run_stream(session, avatar, [pcm[:5000], pcm[5000:]])
    as_float = run_stream(session, avatar, [load_audio(media["audio"])])
    assert all(np.array_equal(a.image, b.image) for a, b in zip(as_int, as_float)) and len(as_int) == len(as_float)
    with pytest.raises(InputError, match="float32 or int16"):
        run_stream(session, avatar, [pcm.astype(np.int32)])
    with pytest.raises(InputError, match="mono"):
        run_stream(session, avatar, [np.zeros((100, 2), dtype=np.float32)])


def test_avatar_folder_round_trip_and_damage(session, media, tmp_path) -> None:
    made = session.avatar(media["video"], tmp_path / "av", pads=(0, 5, 0, 0))
    start = time.perf_counter()
    loaded = load_avatar(tmp_path / "av")
    assert time.perf_counter() - start < 1.0  # no detection pass: a few small files and a memory map
    for name in ("frames", "order", "boxes", "faces"):
        assert np.array_equal(getattr(made, name), getattr(loaded, name))
    assert loaded.manifest["options"]["pads"] == [0, 5, 0, 0] and loaded.fps == FPS
    good = (tmp_path / "av" / "boxes.npy").read_bytes()
    data = bytearray(good)
    data[-1] ^= 1
    (tmp_path / "av" / "boxes.npy").write_bytes(bytes(data))
    with pytest.raises(AvatarError, match="boxes.npy does not match its sha256"):
        load_avatar(tmp_path / "av")
    (tmp_path / "av" / "boxes.npy").write_bytes(good)
    (tmp_path / "av" / "faces.npy").write_bytes(b"short")
    with pytest.raises(AvatarError, match="faces.npy is 5 bytes"):
        load_avatar(tmp_path / "av")
    (tmp_path / "av" / "manifest.json").write_text("{not json")
    with pytest.raises(AvatarError, match="manifest.json is damaged"):
        load_avatar(tmp_path / "av")
    with pytest.raises(AvatarError, match="not an avatar folder"):
        load_avatar(tmp_path)
    with pytest.raises(InputError, match="exists and is not an avatar folder"):
        session.avatar(media["video"], media["folder"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["av"]  # no temporary folder left behind


def test_avatar_of_another_checkpoint_is_refused(session, media, tmp_path) -> None:
    from wav2lip_trt.random_weights import write_random_checkpoints

    avatar = session.avatar(media["folder"], fps=FPS, box=(20, 90, 30, 100))
    other, _ = write_random_checkpoints(tmp_path, seed=1)
    with Session(other, None, device="cpu") as second:
        with pytest.raises(AvatarError, match="was prepared with checkpoint wav2lip.pth"):
            second.stream(avatar)


def test_drop_policy_bounds_the_queue_and_counts(session, media) -> None:
    avatar = session.avatar(media["folder"], fps=FPS, box=(20, 90, 30, 100))
    wav = load_audio(media["audio"])
    with session.stream(avatar, policy="drop", queue_frames=2, max_batch=4, pending_frames=4) as live:
        live.feed(wav)
        live.close()
        time.sleep(0.5)
        got = []
        for frame in live:
            got.append(frame.index)
            time.sleep(0.2)  # a slow consumer
    stats = live.stats
    assert stats.dropped > 0 and len(got) + stats.dropped == live.total
    assert not live._chunk_fed and not live._chunk_left  # per-chunk bookkeeping does not outlive its frames
    assert got == sorted(got)


def test_block_policy_holds_the_producer_back(session, media) -> None:
    avatar = session.avatar(media["folder"], fps=FPS, box=(20, 90, 30, 100))
    wav = load_audio(media["audio"])
    with session.stream(avatar, policy="block", queue_frames=2, max_batch=2, pending_frames=2) as live:
        fed = threading.Event()

        def produce() -> None:
            live.feed(wav)  # 17 frames at once: waits until the generator has taken all but 2
            fed.set()
            live.close()

        threading.Thread(target=produce, daemon=True).start()
        assert not fed.wait(0.3)
        frames = list(live)
    assert fed.is_set() and len(frames) == live.total and live.stats.dropped == 0


def test_wall_clock_fills_late_audio_with_silence(session, media) -> None:
    avatar = session.avatar(media["folder"], fps=FPS, box=(20, 90, 30, 100))
    wav = load_audio(media["audio"])
    with session.stream(avatar, clock="wall", delay=0.3, max_batch=4, pending_frames=8) as live:
        live.feed(wav[:4000])  # 0.25 s, then nothing for a while
        frames = []
        for frame in live.frames(timeout=30):
            frames.append(frame)
            if len(frames) == 8:
                live.close()
    gaps = live.stats.gaps
    assert gaps and sum(g[1] for g in gaps) > 0.05
    assert live.stats.gap_count == len(gaps) == 1  # one pause, reported as one gap with its length
    assert [f.index for f in frames] == list(range(len(frames))) and len(frames) >= 8


def test_a_consumer_that_stops_leaves_nothing_running(session, media) -> None:
    avatar = session.avatar(media["folder"], fps=FPS, box=(20, 90, 30, 100))
    before = {t.name for t in threading.enumerate()}
    with session.stream(avatar, queue_frames=1) as live:
        live.feed(load_audio(media["audio"]))
        next(iter(live))
    assert not any(t.name.startswith("wav2lip-trt-live") for t in threading.enumerate() if t.name not in before)
    with pytest.raises(InputError, match="closed"):
        live.close()
        live.feed(np.zeros(10, dtype=np.float32))


def test_a_stream_that_stops_without_closing_times_out(session, media) -> None:
    avatar = session.avatar(media["folder"], fps=FPS, box=(20, 90, 30, 100))
    with session.stream(avatar) as live:
        live.feed(np.zeros(2000, dtype=np.float32))  # not enough for a frame, and nothing more comes
        with pytest.raises(TimeoutError, match="no frame for 0.5 s"):
            next(live.frames(timeout=0.5))


def test_score_runs_on_the_streamed_faces_as_offline(session, media, tmp_path) -> None:
    from wav2lip_trt.random_weights import write_random_scoring_checkpoints

    expert, _, disc = write_random_scoring_checkpoints(tmp_path / "scoring")
    box = (20, 90, 30, 100)
    offline = session.infer(media["folder"], media["audio"], tmp_path / "o.mp4", fps=FPS, box=box, score=True,
                            expert_checkpoint=expert, disc_checkpoint=disc)
    avatar = session.avatar(media["folder"], fps=FPS, box=box)
    with session.stream(avatar, expert_checkpoint=expert, disc_checkpoint=disc, max_batch=3) as live:
        live.feed(load_audio(media["audio"]))
        live.close()
        assert len(list(live)) == offline.frames
    assert offline.scores is not None and live.scorer is not None
    assert live.scorer.report(total_frames=live.total) == offline.scores


@pytest.mark.gpu
def test_gpu_stream_matches_gpu_infer(checkpoints, media, tmp_path) -> None:
    """On CUDA (device frames, kernels, FP32) the stream's frames match infer's on the same device.

    Batches differ (the stream's adapt; infer's follow its frame budget and CUDA graph), and GPU
    convolutions may pick other algorithms per batch size, so a level or two may differ on a few pixels.
    """
    with Session(checkpoints[0], checkpoints[1], device="cuda", precision="fp32") as gpu:
        expected = infer_frames(gpu, media["video"], media["audio"], tmp_path)
        avatar = gpu.avatar(media["video"])
        streamed = run_stream(gpu, avatar, chunks_of(load_audio(media["audio"]), "random", seed=9))
    assert [f.index for f in streamed] == list(range(len(expected)))
    diff = np.abs(np.stack([f.image for f in streamed]).astype(np.int16) - expected.astype(np.int16))
    assert diff.max() <= 8 and (diff > 1).mean() < 0.01


def test_batches_are_small_when_caught_up_and_large_when_behind(session, media) -> None:
    avatar = session.avatar(media["folder"], fps=FPS, box=(20, 90, 30, 100))
    wav = load_audio(media["audio"])
    with session.stream(avatar, max_batch=4) as live:  # behind: every window arrives at once
        live.feed(wav)
        live.close()
        burst = list(live)
    assert len(burst) == live.total and max(live.stats.batches) == 4
    assert live.stats.report()["batches"]["mean"] > 2
    with session.stream(avatar, max_batch=4) as live:  # caught up: each frame's audio once the last frame is out
        got: list = []
        frames = live.frames(timeout=60)
        for start in range(0, 7200, 640):  # 640 samples = one frame at 25 fps
            live.feed(wav[start : start + 640])
            while len(got) < live.final_frames:
                got.append(next(frames))
        before_close = list(live.stats.batches)
        live.close()
        got.extend(frames)
    assert [f.index for f in got] == list(range(live.total))
    assert len(before_close) >= 5 and set(before_close) == {1}  # one new frame a batch (run beside its copy)


def test_wall_clock_memory_stays_bounded_when_the_consumer_stops(session, media) -> None:
    """The wall clock inserts silence for every frame due, but not past the pending bound (policy block)."""
    avatar = session.avatar(media["folder"], fps=FPS, box=(20, 90, 30, 100))
    with session.stream(avatar, clock="wall", delay=0.0, queue_frames=2, max_batch=2, pending_frames=4) as live:
        live.feed(np.zeros(4000, dtype=np.float32))
        time.sleep(2.0)  # 50 frames due, nobody takes one
        assert len(live._pending) <= 4 + 1 and len(live._out) <= 2
        assert live.stats.gap_count == 1  # one pause, one gap, however many frames it covers
        live.close()
        frames = list(live)
    assert [f.index for f in frames] == list(range(live.total)) and live.stats.dropped == 0


def test_stats_stay_flat_on_a_long_stream() -> None:
    from wav2lip_trt.live.stats import LATENCY_KEPT, RECENT_KEPT, StreamStats

    stats = StreamStats()
    for k in range(LATENCY_KEPT + 500):
        stats.add_latency(0.25 if k % 20 else 0.5)
    for k in range(RECENT_KEPT * 3):
        stats.add_batch(1 + k % 4)
        stats.add_gap(k * 10_000, 640, continues=False)
    stats.add_gap(RECENT_KEPT * 3 * 10_000 - 10_000 + 640, 640, continues=True)  # the last gap goes on
    report = stats.report()
    assert len(stats.chunk_latency) == LATENCY_KEPT and report["latency_ms"]["chunks"] == LATENCY_KEPT + 500
    assert report["latency_ms"]["p50"] == 250.0 and report["latency_ms"]["max"] == 500.0
    assert len(stats.batches) == RECENT_KEPT and report["batches"] == {"count": RECENT_KEPT * 3, "mean": 2.5, "max": 4}
    assert len(stats.gaps) == RECENT_KEPT and report["gaps"] == RECENT_KEPT * 3
    assert stats.gaps[-1][1] == 1280 / 16000 and report["gap_seconds"] == round((RECENT_KEPT * 3 + 1) * 0.04, 3)
    assert len(report["gap_list"]) == 100



def test_two_streams_on_one_session_at_once_are_exact(session, media) -> None:
    """Streams on one session run their generator batches one at a time (the session's SharedGenerator); each
    stream's frames are the ones it makes alone, bit for bit on the CPU."""
    avatar = session.avatar(media["folder"], fps=FPS, box=(20, 90, 30, 100))
    audios = [load_audio(media["audio"]), float_to_int16(speechlike_audio(0.7, seed=12))]
    alone, together = alone_and_together(session, avatar, audios)
    for mine, reference in zip(together, alone):
        assert [f.index for f in mine] == [f.index for f in reference] and len(mine) > 10
        assert all(np.array_equal(a.image, b.image) for a, b in zip(mine, reference))
    assert not np.array_equal(together[0][12].image, together[1][12].image)  # two different audios


def alone_and_together(session: Session, avatar, audios: list) -> tuple[list, list]:
    """Each audio streamed alone in one chunk, then both at once on two threads in random chunks, batches of 3."""
    alone = [run_stream(session, avatar, [wav]) for wav in audios]
    together: list[list] = [[], []]

    def run(k: int) -> None:
        together[k] = run_stream(session, avatar, chunks_of(audios[k], "random", seed=k), max_batch=3)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    return alone, together


@pytest.mark.gpu
def test_a_stream_first_captures_the_graph_at_the_sessions_batch(checkpoints, session, media) -> None:
    """A stream on a fresh GPU session warms it up: the generator's CUDA graph is captured at the session's
    batch (128), not at the stream's first batch (a lone frame beside its copy: 2), which would leave every
    larger batch eager."""
    from wav2lip_trt.execution import pinned_bytes

    avatar = session.avatar(media["folder"], fps=FPS, box=(20, 90, 30, 100))  # made on the CPU session
    with Session(checkpoints[0], None, device="cuda", precision="fp32") as gpu:
        before = pinned_bytes()["slabs"]
        frames = run_stream(gpu, avatar, chunks_of(load_audio(media["audio"]), "random", seed=2))
        assert gpu.generator.graph_batch == 128 and gpu.generator.runner._graph.batch == 128
        assert pinned_bytes()["slabs"] == before  # the stream's upload slab is unpinned when it ends
    assert [f.index for f in frames] == list(range(len(frames))) and len(frames) > 10


@pytest.mark.gpu
def test_two_streams_on_one_gpu_session_at_once(checkpoints, session, media) -> None:
    """Two streams' workers share the session's generator (one CUDA graph, one set of output buffers): each
    stream's frames are the ones it makes alone."""
    avatar = session.avatar(media["folder"], fps=FPS, box=(20, 90, 30, 100))
    audios = [load_audio(media["audio"]), float_to_int16(speechlike_audio(0.7, seed=12))]
    with Session(checkpoints[0], None, device="cuda", precision="fp32") as gpu:
        alone, together = alone_and_together(gpu, avatar, audios)
    for mine, reference in zip(together, alone):
        assert [f.index for f in mine] == [f.index for f in reference]
        diff = np.abs(np.stack([f.image for f in mine]).astype(np.int16) - np.stack([f.image for f in reference]))
        assert diff.max() <= 8 and (diff > 1).mean() < 0.01
