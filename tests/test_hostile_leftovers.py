"""Batch workers live exactly as long as the process that started them, whichever of its threads started them.

``PR_SET_PDEATHSIG`` fires when the *thread* that created a process ends, not its process: a pool
that starts a worker from a thread that then ends (a helper thread starting a replacement) must
not lose that worker, and a worker must still die when the whole process dies, even by SIGKILL,
in the middle of a job (else it would publish an output a resumed batch is making again).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from jobs_media import BOX, write_media

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")


def _parent_main(checkpoint: str, face: str, audio: str, outfile: str) -> None:
    """The pool process: a thread starts a real batch worker, waits until it has loaded, and ends; then a job."""
    import logging
    import multiprocessing
    import os
    import threading

    from wav2lip_trt.jobs.local import _worker_main
    from wav2lip_trt.jobs.worker import Task, WorkerSpec
    from wav2lip_trt.options import InferenceOptions

    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    started: list = []

    def start() -> None:  # as a pool's dispatcher does: start the worker, wait until it has loaded
        process = context.Process(target=_worker_main, daemon=False, args=(
            theirs, WorkerSpec(Path(checkpoint), None, device="cpu", threads=1), 0, None, os.getpid(),
            logging.WARNING))
        process.start()
        theirs.close()
        try:
            started.append((process.pid, list(ours.recv())))  # ["ready"]: its parent-death watch is set by now
        except EOFError:
            started.append((process.pid, "it died while loading"))

    helper = threading.Thread(target=start, name="short-lived")
    helper.start()
    helper.join()  # the thread that created the worker has ended; this process lives on
    pid, message = started[0]
    print(json.dumps({"worker": pid, "message": message}), flush=True)
    time.sleep(1.0)  # a death signal sent when the thread ended has long been handled
    options = InferenceOptions(checkpoint_path=Path(checkpoint), face=Path(face), audio=Path(audio),
                               outfile=Path(outfile), box=tuple(BOX), device="cpu")
    try:
        ours.send(Task(1, options, outfile))
    except OSError:  # the worker is gone
        print(json.dumps({"sent": False}), flush=True)
        return
    print(json.dumps({"sent": True}), flush=True)
    while True:
        time.sleep(0.1)


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_worker_started_from_a_thread_that_ends_lives_until_its_process_dies(checkpoints, tmp_path) -> None:
    from wav2lip_trt.samples import float_to_int16, speechlike_audio, write_wav

    media = write_media(tmp_path / "media")
    audio = write_wav(tmp_path / "media" / "speech.wav", float_to_int16(speechlike_audio(12.0, seed=4)), 16000)
    out = tmp_path / "out"
    out.mkdir()
    args = [str(checkpoints[0]), str(media["face"]), str(audio), str(out / "result.mp4")]
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"from test_hostile_leftovers import _parent_main; _parent_main(*{args!r})")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    worker = None
    try:
        line = parent.stdout.readline()
        assert line, parent.stderr.read()
        first = json.loads(line)
        worker = psutil.Process(first["worker"])
        assert first["message"] == ["ready"], parent.stderr.read()
        assert json.loads(parent.stdout.readline()) == {"sent": True}, "the worker died with the thread that started it"
        deadline = time.monotonic() + 120
        while not any("ffmpeg" in child.name() for child in worker.children()):  # in the middle of the job
            assert _alive(worker), "the worker died with the thread that started it"
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        parent.kill()  # SIGKILL: nothing in the parent stops its workers; they must go by themselves
        parent.wait()
    killed = time.monotonic()
    gone, alive = psutil.wait_procs([worker], timeout=60)
    for process in alive:
        process.kill()
    assert not alive, "the worker outlived its parent"
    assert time.monotonic() - killed < 10  # it stopped its job, not finished it
    assert list(out.iterdir()) == []  # no output published, no temporary file left


def test_the_parent_death_signal_is_no_other_signal_a_worker_answers() -> None:
    """A serve worker handles SIGUSR1 as a cancel and every worker SIGTERM as a stop; a thread ending is neither."""
    import signal

    from wav2lip_trt.jobs.local import PARENT_DEATH_SIGNAL
    from wav2lip_trt.serve.worker_tasks import CANCEL_SIGNAL

    assert PARENT_DEATH_SIGNAL not in (CANCEL_SIGNAL, signal.SIGTERM, signal.SIGINT)
