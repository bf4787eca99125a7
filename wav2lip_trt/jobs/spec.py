"""The jobs file of ``wav2lip-trt batch``: JSONL or CSV, one lip-sync per line, checked whole before any job runs.

JSONL (``.jsonl``, ``.ndjson``, ``.json``): one object per line with ``face``, ``audio``, ``outfile``
and any per-call ``infer`` option by its Python name, with JSON types::

    {"face": "clips/anna.mp4", "audio": "de/anna.wav", "outfile": "out/anna_de.mp4", "pads": [0, 20, 0, 0]}

CSV (``.csv``): a header with the same names, one job per row; an empty cell keeps the default, a
box is ``y1 y2 x1 x2`` (or ``[y1, y2, x1, x2]``), a flag ``true``/``false``. Any other suffix is read
as JSONL when its first non-blank character is ``{``, else as CSV. Blank lines and JSONL lines that
start with ``#`` are skipped. Relative paths are relative to the current directory; a leading ``~``
or ``~user`` is that home folder (no shell expands it here), and one that names no folder is refused
with the file's line.

The whole file is checked first: a malformed file is refused with one :class:`InputError` naming
its line, so a typo on line 900 does not surface after 899 finished jobs; :func:`check_paths` then
keeps every job's outputs off every input and each other. Values are checked for
their type here; what needs the files (a box outside the frame, an unreadable audio) fails that
job alone, when it runs.
"""

from __future__ import annotations

import csv
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..json_input import JsonInputError, load_json_text
from ..files import Named, check_separate
from ..options import InferenceOptions

REQUIRED = ("face", "audio", "outfile")
MODEL_OPTIONS = ("checkpoint_path", "s3fd_checkpoint", "device", "backend", "precision", "engines_dir", "flavor")
"""Chosen once for every worker's session (the same names as :data:`wav2lip_trt.session.MODEL_OPTIONS`,
repeated here so reading a jobs file does not import torch)."""
SHARED_OPTIONS = (*MODEL_OPTIONS, "cache_dir", "no_cache")
"""Given on the command line for the whole batch; a jobs file that sets one is refused."""
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
TRUE_WORDS = {"true", "1", "yes", "y", "on"}
FALSE_WORDS = {"false", "0", "no", "n", "off"}


def per_call_options() -> dict[str, Any]:
    """The options a job may set, by Python name, with their types (every ``infer`` option but the shared ones)."""
    hints = typing.get_type_hints(InferenceOptions)
    return {f.name: hints[f.name] for f in fields(InferenceOptions) if f.name not in (*REQUIRED, *SHARED_OPTIONS)}


@dataclass(frozen=True)
class JobSpec:
    """One line of a jobs file: its place in the file, its files as written, its per-call options."""

    line: int  # 1-based line number in the jobs file (the job's name in the results)
    face: Path
    audio: Path
    outfile: Path
    options: Mapping[str, Any]  # per-call options, already of InferenceOptions' types (tuples, Paths, ...)

    def inference_options(self, shared: Mapping[str, Any]) -> InferenceOptions:
        """The full options of this job: ``shared`` (model and cache options) plus its own, paths made absolute.

        Absolute paths mean the same file to a worker whose current directory differs (a Ray actor on
        another machine sees the same shared storage, mounted at the same place).
        """
        own = {k: absolute(v, k) if isinstance(v, Path) else v for k, v in self.options.items()}
        return InferenceOptions(face=absolute(self.face, "face"), audio=absolute(self.audio, "audio"),
                                outfile=absolute(self.outfile, "outfile"), **shared, **own)


def read_jobs(path: str | Path) -> list[JobSpec]:
    """Every job of ``path``; :class:`InputError` naming the line for the first malformed one."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"jobs file not found: {path}" if not path.exists() else f"jobs file {path} is not a file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"jobs file {path}: cannot read it: {getattr(exc, 'strerror', None) or exc}") from None
    jobs = _read_jsonl(path, text) if _is_jsonl(path, text) else _read_csv(path, text)
    if not jobs:
        raise InputError(f"jobs file {path} holds no jobs")
    return jobs


def check_paths(path: Path, planned: Sequence[tuple[JobSpec, InferenceOptions]], inputs: Sequence[Named] = (),
                outputs: Sequence[Named] = ()) -> None:
    """The write-safety rule over the whole jobs file, before any job runs: :func:`wav2lip_trt.files.check_separate`.

    No job's output (``outfile``, ``save_frames``, ``dump_intermediates``) is the jobs file, another
    job's input or output, or one of the command's own ``inputs`` and ``outputs`` (the checkpoints,
    the results file), compared as files whatever the spelling; one :class:`InputError` names both lines.
    """
    read: list[Named] = [(f"the jobs file {path}", path), *inputs]
    written: list[Named] = list(outputs)
    for job, options in planned:
        own_inputs, own_outputs = options.paths()
        for paths, into in ((own_inputs, read), (own_outputs, written)):
            for label, absolute in paths.items():
                name = label.lstrip("-").replace("-", "_")
                if absolute is None or name in SHARED_OPTIONS:
                    continue
                spelled = getattr(job, name) if name in REQUIRED else job.options.get(name, absolute)
                into.append((f"line {job.line}'s {name} {spelled}", absolute))
    try:
        check_separate(written, read)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None


def _is_jsonl(path: Path, text: str) -> bool:
    if path.suffix.lower() in JSONL_SUFFIXES:
        return True
    if path.suffix.lower() == ".csv":
        return False
    return text.lstrip().startswith("{")


def _read_jsonl(path: Path, text: str) -> list[JobSpec]:
    jobs = []
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            record = load_json_text(stripped)
        except JsonInputError as exc:
            raise InputError(f"{path} line {number}: {exc.problem}") from None
        if not isinstance(record, dict):
            raise InputError(f"{path} line {number}: expected a JSON object {{\"face\": ..., \"audio\": ..., "
                             f"\"outfile\": ...}}, got {type(record).__name__}")
        jobs.append(_job(path, number, record, from_text=False))
    return jobs


def _read_csv(path: Path, text: str) -> list[JobSpec]:
    reader = csv.reader(text.splitlines())
    try:
        header = next(reader)
    except StopIteration:
        return []
    except csv.Error as exc:
        raise InputError(f"{path} line 1: not a valid CSV header ({exc})") from None
    names = [name.strip() for name in header]
    if "" in names or len(set(names)) != len(names):
        raise InputError(f"{path} line 1: the CSV header needs a distinct name in every column, got {','.join(header)}")
    _check_names(path, 1, names)
    jobs = []
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise InputError(f"{path} line {reader.line_num}: not valid CSV ({exc})") from None
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != len(names):
            raise InputError(f"{path} line {reader.line_num}: {len(row)} fields, the header has {len(names)}")
        record = {name: cell.strip() for name, cell in zip(names, row) if cell.strip() != ""}
        jobs.append(_job(path, reader.line_num, record, from_text=True))
    return jobs


def _check_names(path: Path, line: int, names: list[str]) -> None:
    shared = [n for n in names if n in SHARED_OPTIONS]
    if shared:
        raise InputError(f"{path} line {line}: {', '.join(shared)}: shared by every job, give it on the command line "
                         "(e.g. --checkpoint_path, --device, --cache-dir)")
    allowed = per_call_options()
    unknown = [n for n in names if n not in allowed and n not in REQUIRED]
    if unknown:
        raise InputError(f"{path} line {line}: unknown option(s) {', '.join(unknown)}; a job takes "
                         f"{', '.join(REQUIRED)} and the per-call options {', '.join(allowed)}")


def _job(path: Path, line: int, record: dict[str, Any], *, from_text: bool) -> JobSpec:
    _check_names(path, line, list(record))
    missing = [name for name in REQUIRED if record.get(name) in (None, "")]
    if missing:
        raise InputError(f"{path} line {line}: missing {', '.join(missing)} (every job needs face, audio and outfile)")
    hints = per_call_options()
    values: dict[str, Any] = {}
    for name, value in record.items():
        try:
            values[name] = _coerce(Path if name in REQUIRED else hints[name], value, from_text)
        except ValueError as exc:
            raise InputError(f"{path} line {line}: {name}: {exc}") from None
        if isinstance(values[name], Path):
            try:
                absolute(values[name], name)  # a ~ with no home folder: refused now, not when the batch starts
            except InputError as exc:
                raise InputError(f"{path} line {line}: {exc}") from None
    return JobSpec(line, values.pop("face"), values.pop("audio"), values.pop("outfile"), values)


def _coerce(hint: Any, value: Any, from_text: bool) -> Any:
    """``value`` (JSON, or a CSV cell when ``from_text``) as a value of type ``hint``, or ValueError saying why."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if value is None:
            return None
        return _coerce(inner[0], value, from_text)
    if value is None:
        raise ValueError("null is not allowed here")
    if typing.get_origin(hint) is tuple:
        return _int_tuple(value, len(typing.get_args(hint)), from_text)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if from_text and value.lower() in TRUE_WORDS | FALSE_WORDS:
            return value.lower() in TRUE_WORDS
        raise ValueError(f"expected true or false, got {value!r}")
    if hint is int:
        return _int(value, from_text)
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if from_text:
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError(f"expected a number, got {value!r}")
    if hint in (str, Path):
        if not isinstance(value, str) or not value:
            raise ValueError(f"expected a {'path' if hint is Path else 'string'}, got {value!r}")
        if hint is Path and "\0" in value:  # JSON's \u0000: no system call takes it (ValueError deep inside)
            raise ValueError(f"a path cannot hold a NUL character, got {value!r}")
        return Path(value) if hint is Path else value
    raise ValueError(f"cannot be given in a jobs file (type {hint})")  # a new option of a type not handled here


def _int(value: Any, from_text: bool) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if from_text and isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    raise ValueError(f"expected a whole number, got {value!r}")


def _int_tuple(value: Any, size: int, from_text: bool) -> tuple[int, ...]:
    if from_text and isinstance(value, str):
        text = value.strip()
        try:
            value = load_json_text(text) if text.startswith("[") else text.replace(",", " ").split()
        except JsonInputError:
            raise ValueError(f"expected {size} whole numbers, got {value!r}") from None
    if not isinstance(value, (list, tuple)) or len(value) != size:
        raise ValueError(f"expected {size} whole numbers, got {value!r}")
    return tuple(_int(item, from_text) for item in value)


def absolute(path: Path, label: str) -> Path:
    """``path`` with a leading ``~``/``~user`` expanded, made absolute: the same file for any worker.

    :class:`InputError` naming ``label`` when that home folder is unknown (``HOME`` unset and no
    password entry, an unknown user: ``Path.expanduser`` raises RuntimeError) or is not a folder
    (``HOME=/etc/passwd``, ``HOME=relative``), where ``~/out.mp4`` would name some other file.
    """
    path = Path(path)
    head = path.parts[0] if path.parts else ""
    if not head.startswith("~"):
        return path.absolute()
    given = os.environ.get("HOME") if head == "~" else None
    try:
        home = Path(head).expanduser()
    except (RuntimeError, ValueError):  # ValueError: a NUL in the user's name
        why = (f"no user {head[1:]!r} on this machine" if head != "~" else
               "HOME is not set and this user has no home folder" if given is None else f"HOME is {given!r}")
        raise InputError(f"{label} {path}: cannot expand {head}: {why}") from None
    if given == "" or not (home.is_absolute() and home.is_dir()):
        shown = f"HOME is {given!r}" if given is not None else f"{head} is {str(home)!r}"
        raise InputError(f"{label} {path}: cannot expand {head}: {shown}, not a folder")
    return home.joinpath(*path.parts[1:])
