"""Every output is written under a temporary name and renamed, so a half-written file never looks valid.

Outputs are also checked before any work starts (:func:`check_output_file`, :func:`check_output_dir`):
a place that cannot be written, a directory where a file is wanted (or the reverse), a name the
file system refuses, or an input in the way is one :class:`InputError` naming the option and path.

The one rule for every command that writes (:func:`check_separate`): its outputs are compared with
its inputs and with each other as files, not as spellings (``o/a.mp4``, ``o/sub/../a.mp4``, a
symlink and a hard link are one file), and a clash is one error naming both paths.

A file in a folder others write to (a cache entry, a batch's mark beside an output) is read with
:func:`read_regular_file`, which neither follows a link nor blocks on a FIFO.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import stat
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from .errors import InputError

_NO_FOLLOW = os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
_LINK_ERRNOS = {errno.ELOOP, errno.EMLINK}  # what open(O_NOFOLLOW) says for a symbolic link (Linux, BSD)
_SPECIAL_ERRNOS = {errno.EISDIR, errno.ENXIO, errno.ENODEV, errno.EOPNOTSUPP}  # a folder, socket, device
NAME_MAX = 255  # bytes in one file name on ext4, XFS, Btrfs, tmpfs, APFS; used when the system does not say
_RANDOM_CHARS = 8  # hex digits that make a temporary name unique
PARTIAL = "partial"  # the tag of an output's temporary name (.{stem}.{random}.partial{suffix})


def name_max(directory: Path) -> int:
    """The longest file name (in bytes) ``directory``'s file system takes."""
    try:
        value = os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return NAME_MAX
    return value if value and value > 0 else NAME_MAX


def _name_bytes(name: str) -> int:
    return len(os.fsencode(name))


def _cut(text: str, budget: int) -> str:
    """``text`` shortened to at most ``budget`` bytes on disk, on a character boundary."""
    while text and _name_bytes(text) > budget:
        text = text[:-1]
    return text


def _hidden_parts(path: Path, tag: str) -> tuple[str, str]:
    """The stem (cut to fit) and the tail of ``path``'s hidden sibling names: ``.{stem}.{random}{tail}``."""
    directory = path.parent
    tail = f".{tag}{path.suffix}"
    budget = name_max(directory if directory.exists() else Path(".")) - _name_bytes(tail) - _RANDOM_CHARS - 2
    return _cut(path.stem, max(0, budget)), tail


def _create_hidden_sibling(path: Path, tag: str, mode: int) -> tuple[int, Path]:
    """Create ``.{stem}.{random}.{tag}{suffix}`` beside ``path``, exclusively; returns (fd, path).

    The stem is shortened so the name fits the file system (an output name of up to 255 bytes is
    legal, a temporary name built from it by adding characters may not be); the name stays hidden
    and keeps ``path``'s suffix, from which ffmpeg picks the muxer.
    """
    directory = path.parent
    stem, tail = _hidden_parts(path, tag)
    for _ in range(100):
        candidate = directory / f".{stem}.{secrets.token_hex(_RANDOM_CHARS // 2)}{tail}"
        try:
            fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        except FileExistsError:
            continue
        return fd, candidate
    raise FileExistsError(f"no unused temporary name beside {path}")


def temporary_sibling(path: Path) -> Path:
    """A fresh hidden file next to ``path`` (mode 0600) with the same suffix; :func:`publish` renames it."""
    fd, tmp = _create_hidden_sibling(Path(path), PARTIAL, 0o600)
    os.close(fd)
    return tmp


def temporary_siblings(path: Path) -> set[Path]:
    """The temporary files :func:`temporary_sibling` made for ``path`` that exist now, and nothing else.

    For whoever must clean up after a writer that was killed (a batch worker): the exact name pattern,
    ``.{stem}.{8 hex digits}.partial{suffix}`` with the stem cut as it was cut, so no other file matches.
    """
    path = Path(path)
    directory = path.parent
    stem, tail = _hidden_parts(path, PARTIAL)
    pattern = re.compile(re.escape(f".{stem}.") + f"[0-9a-f]{{{_RANDOM_CHARS}}}" + re.escape(tail))
    try:
        names = os.listdir(directory)
    except OSError:
        return set()
    return {directory / name for name in names if pattern.fullmatch(name) and (directory / name).is_file()}


def atomic_write_bytes(path: Path, data: bytes | memoryview) -> None:
    """Write ``data`` to a hidden sibling and rename it over ``path``; nothing half-written is ever left."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_hidden_sibling(path, "tmp", 0o666)  # the file gets the user's umask, unlike mkstemp's 0600
    try:
        with open(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def sha256_bytes(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def publish(tmp: Path, path: Path) -> None:
    """Rename a finished temporary file into place with the permissions the user's umask gives."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)  # created 0600
    os.replace(tmp, path)


@contextmanager
def work_dir(path: Path | None, prefix: str) -> Iterator[Path]:
    """The given folder (created, kept), or a temporary one removed afterwards."""
    if path is not None:
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix=prefix, ignore_cleanup_errors=True) as tmp:
        yield Path(tmp)


# --- reading a file that may be anything -------------------------------------------------------------


class NotRegularFile(OSError):
    """The path is a symbolic link, a folder, a FIFO, a device or a socket; ``strerror`` says which."""


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def open_regular(path: Path, flags: int, mode: int = 0o666, *,
                 follow_links: bool = False) -> tuple[int, os.stat_result]:
    """``os.open(path, flags)`` that neither follows a symbolic link nor blocks; (fd, fstat) of a regular file.

    For a file in a folder anyone may have written to (a cache, an output folder holding our marks):
    opening a FIFO for reading blocks until a writer comes, forever; a link would lead elsewhere.
    Anything but a regular file is :class:`NotRegularFile`. ``follow_links`` is for a file a user
    may link on purpose (an engine's manifest): the link's target must then be a regular file.
    """
    no_follow = _NO_FOLLOW & ~os.O_NOFOLLOW if follow_links else _NO_FOLLOW
    try:
        fd = os.open(path, flags | no_follow, mode)
    except OSError as exc:
        if exc.errno in _LINK_ERRNOS:
            raise NotRegularFile(exc.errno, "it is a symbolic link") from None
        if exc.errno in _SPECIAL_ERRNOS:
            raise NotRegularFile(exc.errno, "it is not a regular file") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise NotRegularFile(errno.EINVAL, f"it is {_kind(st.st_mode)}, not a regular file")
    return fd, st


def read_regular_file(path: Path, *, follow_links: bool = False) -> bytes:
    """The bytes of ``path`` if it is a regular file (:class:`NotRegularFile` otherwise); never blocks on a FIFO."""
    fd, _ = open_regular(path, os.O_RDONLY, follow_links=follow_links)
    with open(fd, "rb") as f:
        return f.read()


# --- checks before any work starts -------------------------------------------------------------------


Named = tuple[str, "Path | str | None"]
"""A path and how an error names it: ``("--outfile out.mp4", Path("out.mp4"))``, ``("line 3's face a.mp4", ...)``."""


def file_key(path: Path | str) -> object:
    """What decides whether two paths are one file: its device and inode when it exists, else its resolved path.

    Resolved (``os.path.realpath``: absolute, ``..`` and symlinks of the existing folders followed), so
    ``o/a.mp4``, ``o/sub/../a.mp4`` and ``link/a.mp4`` agree even before the file exists; the inode
    catches hard links and a case-insensitive file system's other spellings of an existing file.
    """
    try:
        resolved = os.path.realpath(path)
    except (OSError, ValueError):  # ValueError: a NUL in the name; the open would refuse it
        return os.path.abspath(path)
    try:
        info = os.stat(resolved)
    except (OSError, ValueError):
        return resolved
    return (info.st_dev, info.st_ino)


def named(paths: Mapping[str, Path | None] | None) -> list[Named]:
    """``{"--face": Path("a.mp4")}`` -> ``[("--face a.mp4", Path("a.mp4"))]`` (unset paths left out)."""
    return [(f"{label} {path}", path) for label, path in (paths or {}).items() if path is not None]


def check_separate(outputs: Iterable[Named], inputs: Iterable[Named] = ()) -> None:
    """The write-safety rule: no output is one of the inputs of the same command, nor another of its outputs.

    Raises :class:`InputError` naming both paths of the first clash. Inputs may repeat (two jobs read
    one face); ``None`` paths are skipped. Call it before any slow work, with every path the command reads
    and writes: a clash found later would already have overwritten something.
    """
    read: dict[object, str] = {}
    for name, path in inputs:
        if path is not None:
            read.setdefault(file_key(path), name)
    written: dict[object, str] = {}
    for name, path in outputs:
        if path is None:
            continue
        key = file_key(path)
        if key in read:
            raise InputError(f"{name} is the same file as {read[key]}; inputs are never overwritten")
        if key in written:
            raise InputError(f"{name} is the same file as {written[key]}; give each output its own path")
        written[key] = name


def _check_creatable(path: Path, label: str) -> None:
    """``path`` can be created (with its missing parent folders) by this user."""
    existing = next((p for p in (path.parent, *path.parent.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise InputError(f"{label} {path}: cannot write under {existing}: it is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{label} {path}: cannot write under {existing}: permission denied")
    limit = name_max(existing)
    missing = [p.name for p in (path, *path.parents) if p not in (existing, *existing.parents)]
    too_long = [name for name in missing if _name_bytes(name) > limit]
    if too_long:
        raise InputError(f"{label} {path}: the name {too_long[0][:40]}... is too long (a file name can have "
                         f"at most {limit} bytes here)")


def _check_distinct(path: Path, label: str, inputs: Mapping[str, Path | None] | None,
                    outputs: Mapping[str, Path | None] | None) -> None:
    check_separate([*named({label: path}), *named(outputs)], named(inputs))


def check_output_file(path: Path, label: str, inputs: Mapping[str, Path | None] | None = None,
                      outputs: Mapping[str, Path | None] | None = None) -> None:
    """Raise :class:`InputError` unless ``path`` can be written as a file (missing folders are created).

    ``inputs`` maps option names to input paths the output must not replace, ``outputs`` to the
    run's other outputs, which must not be the same path either.
    """
    path = Path(path)
    with _os_errors(path, label):
        _check_distinct(path, label, inputs, outputs)
        if path.is_dir():
            raise InputError(f"{label} {path} is a folder; give a file name")
        if path.name in ("", ".", ".."):
            raise InputError(f"{label} {path} is not a file name")
        _check_creatable(path, label)


def check_output_dir(path: Path, label: str, inputs: Mapping[str, Path | None] | None = None,
                     outputs: Mapping[str, Path | None] | None = None) -> None:
    """Raise :class:`InputError` unless ``path`` is a writable folder or one that can be created."""
    path = Path(path)
    with _os_errors(path, label):
        _check_distinct(path, label, inputs, outputs)
        if path.exists():
            if not path.is_dir():
                raise InputError(f"{label} {path} is a file; give a folder")
            if not os.access(path, os.W_OK | os.X_OK):
                raise InputError(f"{label} {path}: cannot write in this folder: permission denied")
            return
        _check_creatable(path, label)


@contextmanager
def _os_errors(path: Path, label: str) -> Iterator[None]:
    """A path the system refuses to even look at (a name or path too long, a loop of links) is a user error."""
    try:
        yield
    except OSError as exc:
        raise InputError(f"{label} {path}: {exc.strerror or exc}") from None
