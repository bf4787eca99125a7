"""The CLI's error convention, importable by every command module without importing the CLI itself."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import click

from .errors import Wav2LipTrtError


def user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a :class:`Wav2LipTrtError` into ``Error: ...`` on stderr and exit code 1, no traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except Wav2LipTrtError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("Interrupted; no output was written.", err=True)
            sys.exit(130)

    return wrapper
