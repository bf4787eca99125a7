"""The ``--json PATH|-`` report every command offers, checked before the run and written whole after it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from .errors import InputError
from .files import atomic_write_text, check_output_file


def to_stdout(json_path: Path | None) -> bool:
    """``--json -``: the report goes to stdout (so the human-readable text goes to stderr)."""
    return json_path is not None and str(json_path) == "-"


def check_json_path(json_path: Path | None, inputs: Mapping[str, Path | None],
                    outputs: Mapping[str, Path | None] | None = None) -> None:
    """``--json PATH`` must be writable as a file, before the run: not a folder, not an input, not another output."""
    if json_path is not None and not to_stdout(json_path):
        check_output_file(json_path, "--json", inputs, outputs)


def write_json(json_path: Path, data: Any) -> None:
    """The JSON report: to stdout for ``-``, else to a file written whole (temporary file + rename)."""
    text = json.dumps(data, indent=2)
    if to_stdout(json_path):
        click.echo(text)
        return
    try:
        atomic_write_text(json_path, text + "\n")
    except OSError as exc:
        raise InputError(f"--json {json_path}: cannot write: {exc.strerror or exc}") from None
