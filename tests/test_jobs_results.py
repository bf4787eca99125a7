"""When a job counts as done: its output, newer than its inputs and its mark, made with the same options."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from wav2lip_trt.jobs.results import (
    Outcome, ResultsFile, fingerprint, is_done, mark_path, mark_started, read_results,
)
from wav2lip_trt.options import InferenceOptions


def _options(tmp_path: Path, **extra) -> InferenceOptions:
    for name in ("face.mp4", "speech.wav", "wav2lip.pth", "s3fd.pth"):
        (tmp_path / name).write_bytes(b"x")
    return InferenceOptions(checkpoint_path=tmp_path / "wav2lip.pth", s3fd_checkpoint=tmp_path / "s3fd.pth",
                            face=tmp_path / "face.mp4", audio=tmp_path / "speech.wav",
                            outfile=tmp_path / "out" / "result.mp4", **extra)


def _age(path: Path, seconds: float) -> None:
    """Move ``path``'s modification time ``seconds`` into the past."""
    info = path.stat()
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns - int(seconds * 1e9)))


def test_fingerprint_follows_what_shapes_the_output(tmp_path) -> None:
    base = _options(tmp_path, box=(1, 2, 3, 4))
    assert fingerprint(base) == fingerprint(replace(base))
    assert fingerprint(base) != fingerprint(replace(base, crf=23))
    assert fingerprint(base) != fingerprint(replace(base, box=(1, 2, 3, 5)))
    assert fingerprint(base) != fingerprint(replace(base, checkpoint_path=tmp_path / "other.pth"))
    same = (replace(base, cache_dir=tmp_path / "cache", no_cache=True, frame_memory=64.0),
            replace(base, s3fd_checkpoint=tmp_path / "other_s3fd.pth"))  # a fixed box: no detector runs
    assert {fingerprint(options) for options in same} == {fingerprint(base)}
    detect = _options(tmp_path)
    assert fingerprint(detect) != fingerprint(replace(detect, s3fd_checkpoint=tmp_path / "other_s3fd.pth"))


def test_done_only_with_a_newer_output_of_the_same_options(tmp_path) -> None:
    options = _options(tmp_path)
    assert not is_done(options)  # no mark, no output
    mark_started(options, line=7)
    assert mark_path(options.outfile).name == ".result.mp4.wav2lip-trt-job.json"
    assert not is_done(options)  # marked, not finished
    options.outfile.write_bytes(b"video")
    assert is_done(options)
    assert not is_done(replace(options, pads=(0, 20, 0, 0)))  # other options
    _age(options.outfile, 10)
    assert not is_done(options)  # older than its mark: left from a run before this mark was written
    options.outfile.write_bytes(b"video")
    assert is_done(options)
    inputs = ("face.mp4", "speech.wav", "wav2lip.pth", "s3fd.pth")
    for name in inputs:
        for other in inputs:
            _age(tmp_path / other, 100)
        _age(options.outfile, 10)
        _age(mark_path(options.outfile), 20)
        assert is_done(options)
        (tmp_path / name).write_bytes(b"changed")  # an input newer than the output
        assert not is_done(options), name
        options.outfile.write_bytes(b"video")
    assert is_done(options)
    mark_path(options.outfile).write_text("{not json")
    assert not is_done(options)
    options.outfile.unlink()
    mark_started(options, line=7)
    options.outfile.write_bytes(b"")
    assert not is_done(options)  # empty


def test_a_frames_folder_counts_its_newest_frame(tmp_path) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "0001.png").write_bytes(b"x")
    options = replace(_options(tmp_path), face=frames)
    mark_started(options, line=1)
    options.outfile.write_bytes(b"video")
    assert is_done(options)
    for name in ("face.mp4", "speech.wav", "wav2lip.pth", "s3fd.pth", "frames/0001.png", "frames"):
        _age(tmp_path / name, 100)
    _age(options.outfile, 10)
    _age(mark_path(options.outfile), 20)
    assert is_done(options)
    (frames / "0001.png").write_bytes(b"retouched")
    _age(frames, 100)  # rewriting a frame leaves the folder's own time as it was
    assert not is_done(options)


def test_a_long_output_name_gets_a_hashed_mark(tmp_path) -> None:
    long = tmp_path / ("x" * 250 + ".mp4")
    mark = mark_path(long)
    assert mark.parent == tmp_path and len(mark.name) < 255 and mark.name.startswith(".")
    assert mark != mark_path(tmp_path / ("y" * 250 + ".mp4"))


def test_results_lines_survive_a_cut_last_line(tmp_path) -> None:
    path = tmp_path / "results.jsonl"
    with ResultsFile(path) as results:
        results.write(Outcome(1, "ok", "a.mp4", seconds=1.23456, frames=12, fps=25.0, frames_per_second=9.7))
        results.write(Outcome(2, "failed", "b.mp4", error="--face file not found: b.mp4"))
    with open(path, "a") as f:
        f.write('{"job": 3, "stat')  # what a kill in the middle of a write leaves
        f.write("\n" + "[" * 100_000 + "\n")  # a line no results writer made: skipped too, not a RecursionError
    rows = read_results(path)
    assert [row["job"] for row in rows] == [1, 2]
    assert rows[0]["seconds"] == 1.235 and rows[1]["error"] == "--face file not found: b.mp4"
    assert set(rows[0]) == {"job", "status", "output", "error", "seconds", "frames", "fps", "frames_per_second",
                            "worker", "attempts"}


def _unblocked(call: Callable[[], Any], fifo: Path) -> Any:
    """``call()``, which must not wait on ``fifo``: after 10 s it gets the other end (so the test ends) and fails."""
    answers: list[Any] = []
    caller = threading.Thread(target=lambda: answers.append(call()), daemon=True)
    caller.start()
    caller.join(10)
    if caller.is_alive():  # in open(), waiting for the FIFO's other end
        for flags in (os.O_WRONLY | os.O_NONBLOCK, os.O_RDONLY | os.O_NONBLOCK):
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, flags))
        caller.join(10)
        pytest.fail(f"waited on the FIFO {fifo}")
    return answers[0]


def test_a_fifo_or_link_in_place_of_the_mark_is_not_done_and_never_blocks(tmp_path) -> None:
    """Opening a FIFO for reading waits for a writer, forever: the mark is read as a regular file or not at all."""
    options = _options(tmp_path)
    mark_started(options, line=1)
    options.outfile.write_bytes(b"video")
    assert is_done(options)
    mark = mark_path(options.outfile)
    record = mark.read_bytes()
    (tmp_path / "elsewhere.json").write_bytes(record)
    _age(tmp_path / "elsewhere.json", 50)  # older than the output: followed, the link would make the job done
    mark.unlink()
    mark.symlink_to(tmp_path / "elsewhere.json")  # not a mark this batch wrote
    assert not is_done(options)
    mark.unlink()
    os.mkfifo(mark)
    assert _unblocked(lambda: is_done(options), mark) is False
    assert mark.exists() and not mark.is_file()  # looked at, left as it was


def test_results_into_a_fifo_with_no_reader_is_refused_not_waited_for(tmp_path) -> None:
    from wav2lip_trt.errors import InputError

    fifo = tmp_path / "results.jsonl"
    os.mkfifo(fifo)

    def open_results() -> str:
        try:
            with ResultsFile(fifo):
                return "opened"
        except InputError as exc:
            return str(exc)

    assert _unblocked(open_results, fifo) == f"--results {fifo}: cannot write: it is a FIFO with no reader"

    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader (``--results >(jq .)``): written as usual
    try:
        with ResultsFile(fifo) as results:
            results.write(Outcome(1, "ok", "a.mp4", frames=3))
        assert b'"job": 1, "status": "ok"' in os.read(reader, 4096)
    finally:
        os.close(reader)
