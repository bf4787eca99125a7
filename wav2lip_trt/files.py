"""Every output is written under a temporary name and renamed, so a half-written file never looks valid.

Outputs are also checked before any work starts (:func:`check_output_file`, :func:`check_output_dir`):
a place that cannot be written, a directory where a file is wanted (or the reverse), a name the
file system refuses, or an input in the way is one :class:`InputError` naming the option and path.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from .errors import InputError

NAME_MAX = 255  # bytes in one file name on ext4, XFS, Btrfs, tmpfs, APFS; used when the system does not say
_RANDOM_CHARS = 8  # hex digits that make a temporary name unique


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


def _create_hidden_sibling(path: Path, tag: str, mode: int) -> tuple[int, Path]:
    """Create ``.{stem}.{random}.{tag}{suffix}`` beside ``path``, exclusively; returns (fd, path).

    The stem is shortened so the name fits the file system (an output name of up to 255 bytes is
    legal, a temporary name built from it by adding characters may not be); the name stays hidden
    and keeps ``path``'s suffix, from which ffmpeg picks the muxer.
    """
    directory = path.parent
    tail = f".{tag}{path.suffix}"
    budget = name_max(directory if directory.exists() else Path(".")) - _name_bytes(tail) - _RANDOM_CHARS - 2
    stem = _cut(path.stem, max(0, budget))
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
    fd, tmp = _create_hidden_sibling(Path(path), "partial", 0o600)
    os.close(fd)
    return tmp


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


# --- checks before any work starts -------------------------------------------------------------------


def _same_path(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


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
    for other_label, other in (inputs or {}).items():
        if other is not None and _same_path(path, Path(other)):
            raise InputError(f"{label} {path} is the same as {other_label}; inputs are never overwritten")
    for other_label, other in (outputs or {}).items():
        if other is not None and _same_path(path, Path(other)):
            raise InputError(f"{label} {path} is also given to {other_label}; give each output its own path")


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
