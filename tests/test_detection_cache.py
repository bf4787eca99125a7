"""The detection cache: keys, content hashing, hits and misses, never trusting a bad entry, merging, concurrency."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from wav2lip_trt.detection import cache as cache_mod
from wav2lip_trt.detection import (
    CachedDetections,
    DetectionCache,
    DetectionKey,
    array_to_boxes,
    boxes_to_array,
    cache_info,
    content_sha256,
    default_cache_dir,
)
from wav2lip_trt.errors import InputError

LOGGER = "wav2lip_trt.detection.cache"


@pytest.fixture(autouse=True)
def fresh_memo():
    cache_mod._MEMO.clear()
    yield
    cache_mod._MEMO.clear()


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    face = tmp_path / "face.mp4"
    face.write_bytes(b"pretend video bytes " * 100)
    s3fd = tmp_path / "s3fd.pth"
    s3fd.write_bytes(b"pretend checkpoint")
    return {"face": face, "s3fd": s3fd}


def make_key(face: Path, s3fd: Path, **changes) -> DetectionKey:
    key = DetectionKey(face_sha256=content_sha256(face), s3fd_sha256=content_sha256(s3fd), resize_factor=1,
                       crop=(0, -1, 0, -1), rotate=False, static=False, face_det_batch_size=16, runner="torch/fp32")
    return dataclasses.replace(key, **changes)


def dets(start: int, length: int, salt: int = 0) -> np.ndarray:
    """Distinct, recognisable boxes for a batch; every 5th frame has no face."""
    rows = np.arange(start, start + length, dtype=np.int64)[:, None] * 10 + np.arange(4) + salt
    rows[(np.arange(start, start + length) % 5) == 4] = -1
    return rows


def entry(frames_total: int | None, *spans: tuple[int, int], salt: int = 0) -> CachedDetections:
    e = CachedDetections(frames_total)
    for start, length in spans:
        e.put(start, length, dets(start, length, salt))
    return e


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]


# --- location, hashing ------------------------------------------------------------------------------


def test_default_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "wav2lip-trt"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "wav2lip-trt"
    assert DetectionCache().folder == tmp_path / "home" / ".cache" / "wav2lip-trt" / "detections"


def test_without_a_home_directory_the_cache_is_off_with_one_warning(monkeypatch, tmp_path, caplog, files):
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", "relative/home")  # no folder to put the cache in (as no HOME and no passwd entry)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="no detection cache folder: .* pass --cache-dir DIR or set XDG_CACHE_HOME"):
        default_cache_dir()
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/xdg")  # the XDG rule: a relative path is ignored
    with pytest.raises(InputError, match="no detection cache folder"):
        default_cache_dir()
    cache, key = DetectionCache(), make_key(files["face"], files["s3fd"])
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        assert cache.load(key) is None
        assert cache.store(key, entry(40, (0, 16))) is False
    messages = warnings_of(caplog)
    assert len(messages) == 1 and "continuing without caching" in messages[0], messages
    assert sorted(p.name for p in tmp_path.iterdir()) == ["face.mp4", "s3fd.pth"]  # nothing written anywhere


def test_content_sha256_is_the_bytes_hash_and_is_memoized(monkeypatch, files):
    calls = []
    real = cache_mod.sha256_file
    monkeypatch.setattr(cache_mod, "sha256_file", lambda p: calls.append(p) or real(p))
    face = files["face"]
    expected = hashlib.sha256(face.read_bytes()).hexdigest()
    assert content_sha256(face) == expected
    assert content_sha256(face) == expected
    assert len(calls) == 1  # the second call was answered from the memo
    face.write_bytes(b"other content, other size")
    assert content_sha256(face) == hashlib.sha256(b"other content, other size").hexdigest()
    assert len(calls) == 2


def test_same_bytes_under_another_name_hit_same_name_other_bytes_miss(tmp_path, files):
    cache = DetectionCache(tmp_path / "cache")
    cache.store(make_key(files["face"], files["s3fd"]), entry(100, (0, 16)))
    copy = tmp_path / "elsewhere" / "renamed.mov"
    copy.parent.mkdir()
    copy.write_bytes(files["face"].read_bytes())
    hit = cache.load(make_key(copy, files["s3fd"]))
    assert hit is not None and np.array_equal(hit.get(0, 16), dets(0, 16))
    files["face"].write_bytes(b"the same name now holds another video")
    assert cache.load(make_key(files["face"], files["s3fd"])) is None


def test_folder_of_frames_hashes_names_and_contents(tmp_path):
    def folder(name: str, frames: dict[str, bytes]) -> Path:
        path = tmp_path / name
        path.mkdir()
        for file, data in frames.items():
            (path / file).write_bytes(data)
        return path

    frames = {"f1.png": b"one", "f2.png": b"two", "f10.jpg": b"ten"}
    a = content_sha256(folder("a", frames))
    assert content_sha256(folder("b", {**frames, "notes.txt": b"not a frame"})) == a  # other files ignored
    assert content_sha256(folder("c", {**frames, "f2.png": b"TWO"})) != a  # a frame's content
    assert content_sha256(folder("d", {"f1.png": b"one", "f3.png": b"two", "f10.jpg": b"ten"})) != a  # a name
    assert content_sha256(folder("e", {"f1.png": b"one", "f2.png": b"two"})) != a  # a frame fewer
    moved = tmp_path / "a"
    (moved / "f1.png").write_bytes(b"ONE")  # rewritten in place: the memo must notice
    assert content_sha256(moved) != a


# --- keys -------------------------------------------------------------------------------------------------

KEY_CHANGES = {
    "face_sha256": "c" * 64,
    "s3fd_sha256": "d" * 64,
    "resize_factor": 2,
    "crop": (0, 720, 0, -1),
    "rotate": True,
    "static": True,
    "face_det_batch_size": 8,
    "runner": "tensorrt/fp16",
    "detect_every": 3,
    "detect_size": 320,
    "sparse_frames": 99,
}


def test_key_changes_cover_every_field():
    assert set(KEY_CHANGES) == {f.name for f in dataclasses.fields(DetectionKey)}


@pytest.mark.parametrize("field", sorted(KEY_CHANGES))
def test_each_key_part_gives_another_digest_and_a_miss(tmp_path, files, field):
    cache = DetectionCache(tmp_path / "cache")
    key = make_key(files["face"], files["s3fd"])
    assert cache.store(key, entry(100, (0, 16)))
    other = dataclasses.replace(key, **{field: KEY_CHANGES[field]})
    assert other.digest() != key.digest()
    assert cache.load(other) is None
    assert cache.load(key) is not None


def test_schema_version_is_part_of_the_digest(monkeypatch, files):
    key = make_key(files["face"], files["s3fd"])
    before = key.digest()
    monkeypatch.setattr(cache_mod, "SCHEMA_VERSION", cache_mod.SCHEMA_VERSION + 1)
    assert key.digest() != before


def test_key_is_canonical_and_validated(files):
    key = make_key(files["face"], files["s3fd"])
    assert make_key(files["face"], files["s3fd"], crop=[0, -1, 0, -1]).digest() == key.digest()
    assert len(key.digest()) == 64
    with pytest.raises(ValueError, match="face_sha256"):
        dataclasses.replace(key, face_sha256="face.mp4")
    with pytest.raises(ValueError, match="crop"):
        dataclasses.replace(key, crop=(0, -1, 0))
    with pytest.raises(ValueError, match="face_det_batch_size"):
        dataclasses.replace(key, face_det_batch_size=0)
    with pytest.raises(ValueError, match="detect_size"):
        dataclasses.replace(key, detect_size=0)


# --- entries ------------------------------------------------------------------------------------------


def test_hit_returns_exact_batches_and_miss_is_none(tmp_path, files, caplog):
    cache = DetectionCache(tmp_path / "cache")
    key = make_key(files["face"], files["s3fd"])
    assert cache.load(key) is None
    assert cache.store(key, entry(40, (0, 16), (16, 16), (32, 8)))
    got = cache.load(key)
    assert got.frames_total == 40 and got.batches() == [(0, 16), (16, 16), (32, 8)]
    for start, length in got.batches():
        assert got.get(start, length).dtype == np.int64
        assert np.array_equal(got.get(start, length), dets(start, length))
    assert got.get(0, 8) is None  # another batch composition is not the same detections
    assert not warnings_of(caplog)
    assert cache.path(key).name == f"{key.digest()}.npz"
    with np.load(cache.path(key), allow_pickle=False) as npz:  # no pickle inside
        assert sorted(npz.files) == ["boxes", "header", "spans"]


def test_put_validates_and_boxes_convert(tmp_path):
    e = CachedDetections(20)
    with pytest.raises(ValueError, match="shape"):
        e.put(0, 4, np.zeros((3, 4), dtype=np.int64))
    with pytest.raises(ValueError, match="integer"):
        e.put(0, 2, np.zeros((2, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="beyond"):
        e.put(16, 8, np.zeros((8, 4), dtype=np.int64))
    boxes = [(1, 2, 30, 40), None, (0, 0, 5, 6)]
    array = boxes_to_array(boxes)
    assert array.tolist() == [[1, 2, 30, 40], [-1, -1, -1, -1], [0, 0, 5, 6]]
    assert array_to_boxes(array) == boxes
    assert boxes_to_array([]).shape == (0, 4)


def test_store_merges_batches_of_two_runs(tmp_path, files):
    key = make_key(files["face"], files["s3fd"])
    first, second = DetectionCache(tmp_path / "cache"), DetectionCache(tmp_path / "cache")
    assert first.store(key, entry(None, (0, 16), (16, 16)))
    assert second.store(key, entry(64, (32, 16), (16, 16), salt=7))
    got = first.load(key)
    assert got.frames_total == 64  # a known count wins over None
    assert got.batches() == [(0, 16), (16, 16), (32, 16)]
    assert np.array_equal(got.get(0, 16), dets(0, 16))
    assert np.array_equal(got.get(16, 16), dets(16, 16, salt=7))  # the newer store wins for the same batch
    assert first.store(key, CachedDetections(None))
    assert first.load(key).frames_total == 64 and first.load(key).batches() == [(0, 16), (16, 16), (32, 16)]


# --- entries that must not be trusted ------------------------------------------------------------------


def assert_ignored_then_rewritten(cache, key, caplog, reason: str) -> None:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert cache.load(key) is None
    messages = warnings_of(caplog)
    assert len(messages) == 1 and str(cache.path(key)) in messages[0] and reason in messages[0], messages
    assert cache.store(key, entry(40, (0, 16)))
    caplog.clear()
    got = cache.load(key)
    assert got is not None and got.batches() == [(0, 16)] and not warnings_of(caplog)


def test_corrupt_file_is_ignored_and_rewritten(tmp_path, files, caplog):
    cache = DetectionCache(tmp_path / "cache")
    key = make_key(files["face"], files["s3fd"])
    cache.folder.mkdir(parents=True)
    cache.path(key).write_bytes(os.urandom(3000))
    assert_ignored_then_rewritten(cache, key, caplog, "not a readable .npz")


def test_truncated_file_is_ignored_and_rewritten(tmp_path, files, caplog):
    cache = DetectionCache(tmp_path / "cache")
    key = make_key(files["face"], files["s3fd"])
    cache.store(key, entry(400, *[(s, 16) for s in range(0, 400, 16)]))
    data = cache.path(key).read_bytes()
    cache.path(key).write_bytes(data[: len(data) // 2])
    assert_ignored_then_rewritten(cache, key, caplog, "not a readable .npz")


def test_foreign_entry_under_this_name_is_ignored(tmp_path, files, caplog):
    cache = DetectionCache(tmp_path / "cache")
    key = make_key(files["face"], files["s3fd"])
    other = dataclasses.replace(key, runner="tensorrt/fp16")
    cache.store(other, entry(40, (0, 16), salt=99))
    os.replace(cache.path(other), cache.path(key))
    assert_ignored_then_rewritten(cache, key, caplog, "another key")


def test_entry_of_another_schema_is_ignored(tmp_path, files, caplog, monkeypatch):
    cache = DetectionCache(tmp_path / "cache")
    key = make_key(files["face"], files["s3fd"])
    target = cache.path(key)
    monkeypatch.setattr(cache_mod, "SCHEMA_VERSION", 999)
    cache.store(key, entry(40, (0, 16)))
    os.replace(cache.path(key), target)
    monkeypatch.undo()
    assert_ignored_then_rewritten(cache, key, caplog, "schema 999")


def rewrite_arrays(path: Path, **changes: np.ndarray) -> None:
    with np.load(path, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    arrays.update(changes)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.write_bytes(buffer.getvalue())


def test_altered_boxes_fail_the_checksum(tmp_path, files, caplog):
    cache = DetectionCache(tmp_path / "cache")
    key = make_key(files["face"], files["s3fd"])
    cache.store(key, entry(40, (0, 16)))
    rewrite_arrays(cache.path(key), boxes=dets(0, 16) + 1)
    assert_ignored_then_rewritten(cache, key, caplog, "checksum")


def test_wrong_dtype_or_shape_is_ignored(tmp_path, files, caplog):
    cache = DetectionCache(tmp_path / "cache")
    key = make_key(files["face"], files["s3fd"])
    cache.store(key, entry(40, (0, 16)))
    rewrite_arrays(cache.path(key), boxes=dets(0, 16).astype(np.float64))
    assert_ignored_then_rewritten(cache, key, caplog, "not int64")
    rewrite_arrays(cache.path(key), spans=np.zeros((1, 3), dtype=np.int64))
    assert_ignored_then_rewritten(cache, key, caplog, "spans is")


def test_pickled_or_plain_npy_file_is_ignored(tmp_path, files, caplog):
    cache = DetectionCache(tmp_path / "cache")
    key = make_key(files["face"], files["s3fd"])
    cache.folder.mkdir(parents=True)
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"boxes": 1}], dtype=object), allow_pickle=True)
    cache.path(key).write_bytes(buffer.getvalue())
    assert_ignored_then_rewritten(cache, key, caplog, "not a readable .npz")


def test_unreadable_entry_is_ignored(tmp_path, files, caplog):
    cache = DetectionCache(tmp_path / "cache")
    key = make_key(files["face"], files["s3fd"])
    cache.path(key).mkdir(parents=True)  # a folder where the entry should be: reading it fails
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert cache.load(key) is None
    assert "cannot read it" in warnings_of(caplog)[0]
    assert not cache.store(key, entry(40, (0, 16)))  # cannot replace a folder: not fatal either


def test_symlinked_entry_is_not_followed_and_is_replaced(tmp_path, files, caplog):
    key = make_key(files["face"], files["s3fd"])
    elsewhere = DetectionCache(tmp_path / "elsewhere")
    assert elsewhere.store(key, entry(40, (16, 16)))
    outside = elsewhere.path(key).read_bytes()
    cache = DetectionCache(tmp_path / "cache")
    cache.folder.mkdir(parents=True)
    cache.path(key).symlink_to(elsewhere.path(key))  # a valid entry of this key, through a link: not trusted
    assert_ignored_then_rewritten(cache, key, caplog, "cannot read it (it is a symbolic link)")
    assert not cache.path(key).is_symlink() and elsewhere.path(key).read_bytes() == outside


def test_fifo_entry_neither_blocks_nor_is_read(tmp_path, files, caplog):
    cache = DetectionCache(tmp_path / "cache")
    key = make_key(files["face"], files["s3fd"])
    cache.folder.mkdir(parents=True)
    os.mkfifo(cache.path(key))
    results: list = []
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        reader = threading.Thread(target=lambda: results.append(cache.load(key)), daemon=True)
        reader.start()
        reader.join(10)
    if reader.is_alive():  # blocked in open(): give it a writer, so the thread ends, then fail
        os.close(os.open(cache.path(key), os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("opening a FIFO entry blocked")
    assert results == [None]
    assert "it is a FIFO, not a regular file" in warnings_of(caplog)[0]
    assert cache.store(key, entry(40, (0, 16))) and cache.load(key).batches() == [(0, 16)]


@pytest.mark.parametrize("odd", ["dangling link", "link to a file", "fifo"])
def test_a_lock_file_that_is_not_a_regular_file_is_replaced(tmp_path, files, caplog, odd):
    cache = DetectionCache(tmp_path / "cache")
    key = make_key(files["face"], files["s3fd"])
    lock = cache.folder / f".{key.digest()}.lock"
    cache.folder.mkdir(parents=True)
    target = tmp_path / "outside" / "victim"
    target.parent.mkdir()
    if odd == "fifo":
        os.mkfifo(lock)
    else:
        if odd == "link to a file":
            target.write_bytes(b"someone's file")
        lock.symlink_to(target)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert cache.store(key, entry(40, (0, 16)))
    assert "replacing detection cache lock file" in warnings_of(caplog)[0]
    assert lock.is_file() and not lock.is_symlink()
    assert [p.name for p in target.parent.iterdir()] == (["victim"] if odd == "link to a file" else [])
    if odd == "link to a file":
        assert target.read_bytes() == b"someone's file"
    assert cache.load(key).batches() == [(0, 16)]


def test_clear_and_info_do_not_follow_links(tmp_path, files):
    key = make_key(files["face"], files["s3fd"])
    elsewhere = DetectionCache(tmp_path / "elsewhere")
    assert elsewhere.store(key, entry(40, (0, 16)))
    cache = DetectionCache(tmp_path / "cache")
    cache.folder.mkdir(parents=True)
    cache.path(key).symlink_to(elsewhere.path(key))
    assert cache.info().entries == 0  # a link is not an entry of this cache
    cache.clear()
    assert list(cache.folder.iterdir()) == [] and elsewhere.info().entries == 1


# --- failures to write -----------------------------------------------------------------------------------


def test_unwritable_cache_dir_degrades_to_one_warning(tmp_path, files, caplog):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    cache = DetectionCache(blocker)
    key = make_key(files["face"], files["s3fd"])
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        assert cache.load(key) is None
        assert cache.store(key, entry(40, (0, 16))) is False
        assert cache.store(key, entry(40, (16, 16))) is False
    messages = warnings_of(caplog)
    assert len(messages) == 1 and "continuing without caching" in messages[0] and str(cache.folder) in messages[0]
    assert cache.info().entries == 0 and cache.clear() == 0


# --- clear, info --------------------------------------------------------------------------------------


def test_clear_and_info(tmp_path, files):
    root = tmp_path / "cache"
    cache = DetectionCache(root)
    assert cache_info(root).entries == 0
    keys = [make_key(files["face"], files["s3fd"], face_det_batch_size=b) for b in (4, 8)]
    for k in keys:
        cache.store(k, entry(40, (0, 4)))
    info = cache_info(root)
    assert info.entries == 2 and info.path == cache.folder
    assert info.bytes == sum(cache.path(k).stat().st_size for k in keys) > 0
    assert cache.clear() == 2
    assert cache.info().entries == 0 and list(cache.folder.iterdir()) == []  # lock files gone too
    assert cache.load(keys[0]) is None


# --- concurrency ----------------------------------------------------------------------------------------

ROUNDS = 30
SHARED = (10_000, 16)  # the batch both writers store, each with its own uniform content


def writer_entry(writer: int, round_: int) -> CachedDetections:
    e = CachedDetections(None)
    start = 16 * (2 * round_ + writer)
    e.put(start, 16, dets(start, 16))
    e.put(*SHARED, np.full((16, 4), 1000 * (writer + 1) + round_, dtype=np.int64))
    return e


def check_consistent(got: CachedDetections | None) -> None:
    """Whatever a reader sees is one complete entry: every batch intact, the shared batch from one write."""
    if got is None:
        return
    for start, length in got.batches():
        if (start, length) == SHARED:
            shared = got.get(*SHARED)
            assert (shared == shared[0, 0]).all()
        else:
            assert np.array_equal(got.get(start, length), dets(start, length))


def expected_batches() -> list[tuple[int, int]]:
    return sorted([(16 * i, 16) for i in range(2 * ROUNDS)] + [SHARED])


def test_two_writer_threads_and_a_reader(tmp_path, files, caplog):
    root, key = tmp_path / "cache", make_key(files["face"], files["s3fd"])
    results: list[bool] = []

    def write(writer: int) -> None:
        cache = DetectionCache(root)
        for round_ in range(ROUNDS):
            results.append(cache.store(key, writer_entry(writer, round_)))

    threads = [threading.Thread(target=write, args=(w,)) for w in (0, 1)]
    reader = DetectionCache(root)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            check_consistent(reader.load(key))
        for t in threads:
            t.join()
    assert results == [True] * (2 * ROUNDS)
    assert not warnings_of(caplog)
    assert reader.load(key).batches() == expected_batches()


WRITER_SCRIPT = """
import sys
sys.path[:0] = [sys.argv[4]]
from pathlib import Path
from test_detection_cache import writer_entry, ROUNDS
from wav2lip_trt.detection import DetectionCache, DetectionKey
import json
key = DetectionKey(**{**json.loads(sys.argv[2]), "crop": tuple(json.loads(sys.argv[2])["crop"])})
cache = DetectionCache(Path(sys.argv[1]))
for round_ in range(ROUNDS):
    assert cache.store(key, writer_entry(int(sys.argv[3]), round_))
"""


def test_two_writer_processes_and_a_reader(tmp_path, files, caplog):
    root, key = tmp_path / "cache", make_key(files["face"], files["s3fd"])
    fields = dataclasses.asdict(key)
    import json

    procs = [subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, str(root), json.dumps(fields), str(w),
                               str(Path(__file__).parent)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for w in (0, 1)]
    reader, reads = DetectionCache(root), 0
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        while any(p.poll() is None for p in procs):
            check_consistent(reader.load(key))
            reads += 1
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert all(err == b"" for _, err in outputs), outputs  # no warnings in the writers either
    assert not warnings_of(caplog) and reads > 0
    final = reader.load(key)
    assert final.batches() == expected_batches()
    check_consistent(final)
    leftovers = [p.name for p in reader.folder.iterdir() if ".tmp" in p.name]
    assert leftovers == []


# --- a real run without a cache folder ---------------------------------------------------------------

UNKNOWN_UID = 54321


def _without_passwd_entry() -> list[str] | None:
    """``unshare`` arguments that run a command as a uid without a passwd entry, or None where it cannot."""
    import pwd
    import shutil

    try:
        pwd.getpwuid(UNKNOWN_UID)
        return None
    except KeyError:
        pass
    if shutil.which("unshare") is None:
        return None
    prefix = ["unshare", "--user", f"--map-user={UNKNOWN_UID}", f"--map-group={UNKNOWN_UID}"]
    probe = subprocess.run([*prefix, sys.executable, "-c", "import pathlib; pathlib.Path.home()"],
                           capture_output=True, text=True, env=_env_without_home())
    return prefix if "Could not determine home directory" in probe.stderr else None


def _env_without_home(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k not in ("HOME", "XDG_CACHE_HOME")}, **extra}


@pytest.mark.parametrize("how", ["uid without a passwd entry", "relative HOME"])
def test_detect_without_a_home_directory_warns_and_runs(checkpoints, tmp_path, how):
    """Item 8 of issue 17: RuntimeError("Could not determine home directory") from the default cache path."""
    from wav2lip_trt.samples import talking_face_frames, write_video

    prefix = _without_passwd_entry() if how == "uid without a passwd entry" else []
    if prefix is None:
        pytest.skip("needs unshare --user --map-user and a uid without a passwd entry")
    env = _env_without_home() if prefix else _env_without_home(HOME="relative")
    face = write_video(tmp_path / "face.mp4", talking_face_frames(4, 160, 128, seed=3), 25.0)
    work = tmp_path / "cwd"
    work.mkdir()
    proc = subprocess.run([*prefix, sys.executable, "-m", "wav2lip_trt", "detect", "--face", str(face),
                           "--s3fd-checkpoint", str(checkpoints[1]), "--device", "cpu"],
                          capture_output=True, text=True, env=env, cwd=work, timeout=300)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    warned = [line for line in proc.stderr.splitlines() if "continuing without caching" in line]
    assert len(warned) == 1 and "no detection cache folder" in warned[0], proc.stderr
    assert "(detected; S3FD ran on 4)" in proc.stderr  # S3FD ran, uncached
    assert list(work.iterdir()) == []  # nothing written where the command ran
