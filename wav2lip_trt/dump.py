"""``--dump-intermediates``: the pipeline's intermediate arrays as ``.npy`` files for parity checks.

Arrays are appended row by row as the stream produces them, so dumping a clip never holds the
whole clip in memory. The ``.npy`` header is written with room for any length and rewritten
with the final shape on close.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

import numpy as np

_MAGIC = b"\x93NUMPY\x01\x00"
_HEADER_BYTES = 256  # total header size incl. magic: plenty for any (N, ...) shape dict


def _header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    text = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
    body_len = _HEADER_BYTES - len(_MAGIC) - 2
    body = (text + " " * (body_len - len(text) - 1) + "\n").encode("latin1")
    if len(body) != body_len:
        raise ValueError(f"npy header too long for shape {shape}")
    return _MAGIC + body_len.to_bytes(2, "little") + body


class NpyAppender:
    """An ``.npy`` file of rows with a fixed trailing shape, grown by :meth:`append`."""

    def __init__(self, path: Path, row_shape: tuple[int, ...], dtype: np.dtype | type) -> None:
        self.path, self.row_shape, self.dtype = path, tuple(row_shape), np.dtype(dtype)
        self.rows = 0
        self._file = open(path, "wb")
        self._file.write(_header(self.dtype, (0, *self.row_shape)))

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"{self.path.name}: rows {rows.shape[1:]} != {self.row_shape}")
        self._file.write(rows.tobytes())
        self.rows += rows.shape[0]

    def close(self) -> None:
        if self._file.closed:
            return
        self._file.seek(0)
        self._file.write(_header(self.dtype, (self.rows, *self.row_shape)))
        self._file.close()


class IntermediateDump:
    """The files named in the README: mel, mel_chunks, boxes, det_boxes, pred, frames."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._files: dict[str, NpyAppender] = {}

    def save(self, name: str, array: np.ndarray) -> None:
        """Write a small whole array at once (``mel.npy``)."""
        np.save(self.directory / f"{name}.npy", array)

    def append(self, name: str, rows: np.ndarray) -> None:
        writer = self._files.get(name)
        if writer is None:
            writer = self._files[name] = NpyAppender(self.directory / f"{name}.npy", rows.shape[1:], rows.dtype)
        writer.append(rows)

    def close(self) -> None:
        for writer in self._files.values():
            writer.close()

    def __enter__(self) -> "IntermediateDump":
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

