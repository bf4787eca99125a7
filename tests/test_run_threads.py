"""A run that fails leaves no worker thread behind, even while its error (and so its traceback) is kept."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from wav2lip_trt.samples import float_to_int16, speechlike_audio, talking_face_frames, write_video, write_wav
from wav2lip_trt.session import Session


class Stop(Exception):
    """Raised from the progress callback: an error in the middle of generation (as a Ctrl-C would be)."""


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("threads")
    return {
        "face": write_video(d / "face.mp4", talking_face_frames(60, 96, 80, seed=3), 25.0),
        "audio": write_wav(d / "a.wav", float_to_int16(speechlike_audio(2.4, seed=5)), 16000),
    }


@pytest.fixture(scope="module")
def session(checkpoints):
    with Session(checkpoints[0], checkpoints[1], device="cpu") as opened:
        yield opened


def _alive(prefix: str, wait: float = 3.0) -> list[str]:
    deadline = time.monotonic() + wait
    while True:
        names = [t.name for t in threading.enumerate() if t.name.startswith(prefix)]
        if not names or time.monotonic() > deadline:
            return names
        time.sleep(0.05)


def test_an_error_while_generating_ends_the_decode_thread(media, session, tmp_path: Path) -> None:
    """The generation pass decodes 16 frames ahead of 60 in a worker thread; an error after the first batch of
    4 must stop it, although the kept traceback still references the run's frames and their generators."""

    def on_frame(done: int) -> None:
        if done >= 4:
            raise Stop(f"stopped at frame {done}")

    out = tmp_path / "out.mp4"
    with pytest.raises(Stop) as info:
        session.infer(media["face"], media["audio"], out, box=(10, 70, 10, 86), wav2lip_batch_size=4, on_frame=on_frame)
    assert info.value.__traceback__ is not None  # kept, as a caller that reports or retries keeps it
    assert _alive("wav2lip-trt-decode") == []
    assert _alive("wav2lip-trt-writer") == []
    assert not out.exists()


@pytest.mark.parametrize("every", [1, 3])
def test_an_error_while_detecting_ends_the_decode_thread(media, session, tmp_path: Path, every: int) -> None:
    """The same for the detection pass (dense and --detect-every), stopped after its first S3FD batch of 4: its
    decoded frames are iterated by a loop's own iterator, which the error releases (a regression guard)."""

    def on_frame(done: int) -> None:
        raise Stop(f"stopped after {done} frames")

    with pytest.raises(Stop) as info:
        session.infer(media["face"], media["audio"], tmp_path / "out.mp4", face_det_batch_size=4, detect_every=every,
                      no_cache=True, on_frame=on_frame)
    assert info.value.__traceback__ is not None
    assert _alive("wav2lip-trt-decode") == []
