"""On-disk cache of RAW per-frame S3FD detections, so a second run on the same face input skips S3FD.

Detection dominates the run time, and its raw output (the box S3FD chooses per frame, before
``--pads``, smoothing and the missing-face policy) depends only on what :class:`DetectionKey`
holds; pads and smoothing can therefore change between runs without detecting again.

Entries live in ``default_cache_dir()/detections/<key digest>.npz``. Boxes are stored per
detection BATCH, because S3FD's post-processing is batch-dependent: the candidate list of a batch
depends on all of its images, so a box is only exact when reused for the same batch composition.

File format (``np.savez_compressed``, read with ``allow_pickle=False``; no pickle anywhere):

* ``header``: uint8 array holding UTF-8 JSON ``{"format": "wav2lip-trt-detections", "schema": 1,
  "key": "<the key's canonical JSON>", "frames_total": N | null, "checksum": "<sha256>"}``;
* ``spans``: int64 (n, 2), the (start, length) of each batch, sorted;
* ``boxes``: int64 (sum of lengths, 4), x1 y1 x2 y2 per frame in span order, ``-1 -1 -1 -1`` = no face.

The checksum covers ``frames_total`` and both arrays. A file that cannot be read, is truncated,
holds another key or schema, or fails any check is ignored with a ``logging`` warning naming the
file and the reason, and is replaced by the next :meth:`DetectionCache.store` - never trusted.

Writes go to a uniquely named temporary file in the same folder renamed over the entry, so readers
see a whole old or a whole new entry. :meth:`DetectionCache.store` merges with the entry on disk
under an ``fcntl.flock`` lock file, so concurrent runs detecting different batches keep them all.
Entries and lock files are opened only as regular files, never through a symbolic link and never
blocking (``O_NOFOLLOW | O_NONBLOCK``, then ``fstat``): a linked or special entry (a FIFO would block
the read forever) is ignored with a warning and replaced, a linked or special lock file is replaced,
so nothing is read or created outside the cache folder. A cache that cannot be used - a folder
that cannot be created or written, or no folder at all (no ``--cache-dir``, no ``XDG_CACHE_HOME``
and no home directory, as for a container's uid without a passwd entry) - is never fatal: one
warning, and the run goes on without caching. The empty ``.<digest>.lock`` files stay beside the
entries; :meth:`DetectionCache.clear` removes them too, so clear only while no run is storing.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import stat
import threading
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..files import atomic_write_bytes, sha256_file
from ..json_input import JsonInputError, load_json_text
from .regular_files import NotRegularFile, lock_file, read_regular_file

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: writes stay atomic, merges may lose a racing run's batches
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1  # bump when what a detection depends on, or the file layout, changes
FORMAT = "wav2lip-trt-detections"
NO_FACE = -1  # every coordinate of a "no face" row
Box = tuple[int, int, int, int]
_ENTRY_NAME = re.compile(r"^[0-9a-f]{64}\.npz$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/wav2lip-trt``, else ``~/.cache/wav2lip-trt`` (the XDG base directory rule, which
    ignores a relative ``XDG_CACHE_HOME``).

    Raises :class:`InputError` when neither names a folder: no usable ``XDG_CACHE_HOME`` and no home
    directory (``HOME`` unset or relative and the uid without a passwd entry, common in containers).
    """
    base = os.environ.get("XDG_CACHE_HOME")
    if base and os.path.isabs(base):
        return Path(base) / "wav2lip-trt"
    try:
        home = Path.home()
    except (RuntimeError, KeyError, OSError):  # Path.home(): RuntimeError("Could not determine home directory")
        home = None
    if home is None or not home.is_absolute():
        raise InputError("no detection cache folder: XDG_CACHE_HOME is not set and there is no home directory; "
                         "pass --cache-dir DIR or set XDG_CACHE_HOME")
    return home / ".cache" / "wav2lip-trt"


# --- content hashes ------------------------------------------------------------------------------------

_MEMO: dict[tuple, str] = {}  # (kind, resolved path, size and mtime_ns of the file or of each frame) -> sha256
_MEMO_LIMIT = 1024
_MEMO_LOCK = threading.Lock()


def _memoized(key: tuple, compute) -> str:
    with _MEMO_LOCK:
        if key in _MEMO:
            return _MEMO[key]
    value = compute()
    with _MEMO_LOCK:
        if len(_MEMO) >= _MEMO_LIMIT:
            _MEMO.pop(next(iter(_MEMO)))
        _MEMO[key] = value
    return value


def content_sha256(path: Path) -> str:
    """sha256 of a file's bytes, or of a frame folder's sorted (name, sha256) pairs of its image files.

    The content, not the name, decides: a renamed copy hits the cache, a file rewritten in place
    misses it. Hashing a 1 GB video takes seconds, so results are remembered for the process, keyed
    by (resolved path, size, mtime_ns) - of the file, or of every image file of a folder.
    """
    path = Path(path).resolve()
    if not path.is_dir():
        st = path.stat()
        return _memoized(("file", str(path), st.st_size, st.st_mtime_ns), lambda: sha256_file(path))
    from ..video import IMAGE_SUFFIXES  # here, not at the top: keeps this module free of OpenCV and cycles

    images = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    stats = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in images)

    def folder() -> str:
        pairs = [[p.name, sha256_file(p)] for p in images]
        return hashlib.sha256(_canonical(pairs).encode()).hexdigest()

    return _memoized(("folder", str(path), stats), folder)


def _canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


# --- key -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DetectionKey:
    """Everything that decides the raw detections of a run; :meth:`digest` names the cache entry."""

    face_sha256: str  # content_sha256(face input)
    s3fd_sha256: str  # content_sha256(S3FD checkpoint)
    resize_factor: int
    crop: tuple[int, int, int, int]  # top, bottom, left, right; -1 = full size
    rotate: bool
    static: bool
    face_det_batch_size: int
    runner: str  # S3FD runner's backend and precision, e.g. "tensorrt/fp16": FP16 engines give other boxes
    detect_every: int = 1  # detect every K-th frame
    detect_size: int | None = None  # detect on frames scaled to N px, None = full size
    sparse_frames: int | None = None  # frames a --detect-every schedule spans (its last frame is always
    # detected, so where the clip ends changes the last batch); None when every frame is detected

    def __post_init__(self) -> None:
        """Checks and normalises (numpy ints to int, a crop list to a tuple) so equal settings give one digest."""
        for name in ("face_sha256", "s3fd_sha256"):
            if not (isinstance(value := getattr(self, name), str) and _HEX64.match(value)):
                raise ValueError(f"{name} must be a lower-case hex sha256, got {value!r}")
        if len(crop := tuple(self.crop)) != 4 or not all(_is_int(v) for v in crop):
            raise ValueError(f"crop must be 4 integers, got {self.crop!r}")
        for name in ("resize_factor", "face_det_batch_size", "detect_every", "detect_size", "sparse_frames"):
            value = getattr(self, name)
            if not (value is None and name in ("detect_size", "sparse_frames")) and not (_is_int(value) and value >= 1):
                raise ValueError(f"{name} must be an integer of at least 1, got {value!r}")
            object.__setattr__(self, name, None if value is None else int(value))
        if not isinstance(self.runner, str) or not self.runner:
            raise ValueError(f"runner must name the backend and precision, got {self.runner!r}")
        object.__setattr__(self, "crop", tuple(int(v) for v in crop))
        object.__setattr__(self, "rotate", bool(self.rotate))
        object.__setattr__(self, "static", bool(self.static))

    def canonical(self) -> str:
        """Sorted, compact JSON of every field and :data:`SCHEMA_VERSION`; stored inside each entry."""
        return _canonical({"schema": SCHEMA_VERSION, **asdict(self)})

    def digest(self) -> str:
        """Hex sha256 of :meth:`canonical`: the entry's file name."""
        return hashlib.sha256(self.canonical().encode()).hexdigest()


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


# --- entry ------------------------------------------------------------------------------------------------


def boxes_to_array(boxes: Sequence[Box | None]) -> np.ndarray:
    """A detector's per-frame boxes as the int64 (n, 4) rows an entry stores; None becomes -1 -1 -1 -1."""
    rows = [(NO_FACE,) * 4 if b is None else tuple(int(v) for v in b) for b in boxes]
    return np.array(rows, dtype=np.int64).reshape(len(rows), 4)


def array_to_boxes(rows: np.ndarray) -> list[Box | None]:
    """The reverse of :func:`boxes_to_array`."""
    return [None if (r == NO_FACE).all() else (int(r[0]), int(r[1]), int(r[2]), int(r[3])) for r in rows]


@dataclass(eq=False)
class CachedDetections:
    """Raw boxes of one face input, per detection batch (start, length) -> int64 (length, 4)."""

    frames_total: int | None = None  # frames in the source after the transform, None if unknown
    _batches: dict[tuple[int, int], np.ndarray] = field(default_factory=dict, repr=False)

    def get(self, start: int, length: int) -> np.ndarray | None:
        """The batch's boxes (read-only), or None when this exact batch was not stored."""
        return self._batches.get((int(start), int(length)))

    def put(self, start: int, length: int, dets: np.ndarray) -> None:
        """Remember one batch's boxes; replaces an earlier batch with the same (start, length)."""
        start, length = int(start), int(length)
        if start < 0 or length < 1:
            raise ValueError(f"a batch needs start >= 0 and length >= 1, got ({start}, {length})")
        if self.frames_total is not None and start + length > self.frames_total:
            raise ValueError(f"batch ({start}, {length}) ends beyond the source's {self.frames_total} frames")
        dets = np.asarray(dets)
        if dets.shape != (length, 4) or not np.issubdtype(dets.dtype, np.integer):
            raise ValueError(f"batch ({start}, {length}) needs an integer array of shape ({length}, 4), "
                             f"got {dets.dtype} {dets.shape}")
        array = np.array(dets, dtype=np.int64)
        array.flags.writeable = False
        self._batches[(start, length)] = array

    def batches(self) -> list[tuple[int, int]]:
        """(start, length) of every stored batch, in order."""
        return sorted(self._batches)

    def merged(self, newer: CachedDetections) -> CachedDetections:
        """This entry with ``newer``'s batches added (``newer`` wins for the same batch)."""
        frames_total = newer.frames_total if newer.frames_total is not None else self.frames_total
        out = CachedDetections(frames_total)
        for start, length in sorted({*self._batches, *newer._batches}):
            if frames_total is None or start + length <= frames_total:
                out.put(start, length, newer.get(start, length) if (start, length) in newer._batches
                        else self._batches[(start, length)])
        return out


def _checksum(frames_total: int | None, spans: np.ndarray, boxes: np.ndarray) -> str:
    digest = hashlib.sha256(_canonical(frames_total).encode() + b"\0")
    digest.update(np.ascontiguousarray(spans, dtype="<i8").tobytes())
    digest.update(np.ascontiguousarray(boxes, dtype="<i8").tobytes())
    return digest.hexdigest()


def _encode(key: DetectionKey, entry: CachedDetections) -> bytes:
    spans = np.array(entry.batches(), dtype="<i8").reshape(-1, 2)
    parts = [entry.get(s, n) for s, n in entry.batches()]
    boxes = np.concatenate(parts).astype("<i8") if parts else np.zeros((0, 4), dtype="<i8")
    header = {"format": FORMAT, "schema": SCHEMA_VERSION, "key": key.canonical(),
              "frames_total": entry.frames_total, "checksum": _checksum(entry.frames_total, spans, boxes)}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, header=np.frombuffer(_canonical(header).encode(), dtype=np.uint8),
                        spans=spans, boxes=boxes)
    return buffer.getvalue()


class _Invalid(Exception):
    """Why an entry on disk is not trusted."""


def _decode(data: bytes, key: DetectionKey) -> CachedDetections:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            names = sorted(npz.files)
            if names == ["boxes", "header", "spans"]:
                raw_header, spans, boxes = npz["header"], npz["spans"], npz["boxes"]
    except Exception as exc:  # noqa: BLE001 - any damage (zip, zlib, npy header) only means "not trusted"
        raise _Invalid(f"not a readable .npz file ({type(exc).__name__}: {exc})") from None
    if names != ["boxes", "header", "spans"]:
        raise _Invalid(f"holds arrays {names}, not header, spans, boxes")
    if raw_header.dtype != np.uint8 or raw_header.ndim != 1:
        raise _Invalid(f"header is {raw_header.dtype} {raw_header.shape}, not uint8 bytes")
    try:
        header = load_json_text(raw_header.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, JsonInputError) as exc:
        raise _Invalid(f"header is not JSON ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise _Invalid(f"not a {FORMAT} file")
    if header.get("schema") != SCHEMA_VERSION:
        raise _Invalid(f"written by schema {header.get('schema')!r}, this version reads schema {SCHEMA_VERSION}")
    if header.get("key") != key.canonical():
        raise _Invalid("holds the detections of another key (another face input or other settings)")
    frames_total = header.get("frames_total")
    if frames_total is not None and (not _is_int(frames_total) or frames_total < 0):
        raise _Invalid(f"frames_total is {frames_total!r}")
    for name, array, width in (("spans", spans, 2), ("boxes", boxes, 4)):
        if array.dtype != np.dtype("<i8") or array.ndim != 2 or array.shape[1] != width:
            raise _Invalid(f"{name} is {array.dtype} {array.shape}, not int64 (n, {width})")
    if header.get("checksum") != _checksum(frames_total, spans, boxes):
        raise _Invalid("checksum mismatch (the file was altered or damaged)")
    distinct = len({(start, length) for start, length in spans.tolist()}) == len(spans)
    if (spans[:, 1] < 1).any() or int(spans[:, 1].sum()) != len(boxes) or not distinct:
        raise _Invalid("batch spans do not match the stored boxes")
    entry, offsets = CachedDetections(frames_total), np.cumsum(spans[:, 1]) - spans[:, 1]
    try:
        for (start, length), offset in zip(spans.tolist(), offsets.tolist()):
            entry.put(start, length, boxes[offset : offset + length])
    except ValueError as exc:  # a negative start or a batch beyond frames_total
        raise _Invalid(str(exc)) from None
    return entry


# --- the cache --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CacheInfo:
    path: Path  # the detections folder
    entries: int
    bytes: int


class DetectionCache:
    """Entries under ``root/detections``; see the module docstring for the guarantees.

    Without ``root`` the cache lives under :func:`default_cache_dir`; when there is none, the cache
    is off: :meth:`load` finds nothing and :meth:`store` writes nothing, after one warning.
    """

    def __init__(self, root: Path | None = None) -> None:
        self._unusable: str | None = None  # why there is no cache folder at all
        if root is None:
            try:
                root = default_cache_dir()
            except InputError as exc:
                self._unusable = str(exc)
        self.root = Path(root) if root is not None else None
        self.folder = self.root / "detections" if self.root is not None else None
        self._write_warned = False

    def available(self) -> bool:
        """False (after one warning) when there is no cache folder at all, so a run knows it detects uncached."""
        if self.folder is None:
            self._warn_unusable(self._unusable)
        return self.folder is not None

    def path(self, key: DetectionKey) -> Path:
        return self._folder() / f"{key.digest()}.npz"

    def load(self, key: DetectionKey) -> CachedDetections | None:
        """The stored entry, or None when there is none or it is not trustworthy (logged as a warning)."""
        if self.folder is None:
            self._warn_unusable(self._unusable)
            return None
        return self._read(self.path(key), key)

    def store(self, key: DetectionKey, entry: CachedDetections) -> bool:
        """Merge ``entry`` into the stored one and write it atomically; False (and a warning) if it cannot."""
        if self.folder is None:
            self._warn_unusable(self._unusable)
            return False
        target = self.path(key)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with self._locked(key):
                stored = self._read(target, key)
                merged = stored.merged(entry) if stored is not None else entry
                atomic_write_bytes(target, _encode(key, merged))
        except OSError as exc:
            self._warn_unusable(f"detection cache {self.folder} cannot be written ({exc.strerror or exc})")
            return False
        return True

    def clear(self) -> int:
        """Remove every entry (and lock and leftover temporary files); returns the number of entries removed."""
        removed = 0
        for p, _ in self._files():
            is_entry = bool(_ENTRY_NAME.match(p.name))
            p.unlink(missing_ok=True)
            removed += is_entry
        return removed

    def info(self) -> CacheInfo:
        """Number of entries and their size in bytes."""
        sizes = [st.st_size for p, st in self._files() if _ENTRY_NAME.match(p.name) and stat.S_ISREG(st.st_mode)]
        return CacheInfo(self._folder(), len(sizes), sum(sizes))

    def _folder(self) -> Path:
        if self.folder is None:
            raise InputError(self._unusable or "no detection cache folder")
        return self.folder

    def _warn_unusable(self, reason: str | None) -> None:
        level = logging.DEBUG if self._write_warned else logging.WARNING
        self._write_warned = True
        log.log(level, "%s; continuing without caching", reason)

    def _files(self) -> list[tuple[Path, os.stat_result]]:
        """Everything in the folder but sub-folders, with its ``lstat`` (links are never followed)."""
        try:
            children = list(self._folder().iterdir())
        except (FileNotFoundError, NotADirectoryError):
            return []
        found = []
        for p in children:
            try:
                st = p.lstat()
            except FileNotFoundError:  # removed meanwhile
                continue
            if not stat.S_ISDIR(st.st_mode):
                found.append((p, st))
        return found

    def _read(self, path: Path, key: DetectionKey) -> CachedDetections | None:
        try:
            data = read_regular_file(path)
        except (FileNotFoundError, NotADirectoryError):  # no entry; a blocked folder is reported by store
            return None
        except NotRegularFile as exc:
            log.warning("ignoring detection cache entry %s: cannot read it (%s); it will be replaced", path, exc.strerror)
            return None
        except OSError as exc:
            log.warning("ignoring detection cache entry %s: cannot read it (%s)", path, exc.strerror or exc)
            return None
        try:
            return _decode(data, key)
        except _Invalid as exc:
            log.warning("ignoring detection cache entry %s: %s; it will be rewritten", path, exc)
            return None

    @contextlib.contextmanager
    def _locked(self, key: DetectionKey) -> Iterator[None]:
        """An exclusive flock on ``.<digest>.lock``: one read-merge-write per key at a time, across processes."""
        if fcntl is None:  # pragma: no cover
            yield
            return
        fd = lock_file(self._folder() / f".{key.digest()}.lock", on_replaced=lambda path, why: log.warning(
            "replacing detection cache lock file %s: %s", path, why))
        try:
            yield
        finally:
            os.close(fd)  # releases the lock


def cache_info(root: Path | None = None) -> CacheInfo:
    """:meth:`DetectionCache.info` of the cache under ``root`` (default :func:`default_cache_dir`;
    :class:`InputError` when there is none)."""
    return DetectionCache(root).info()
