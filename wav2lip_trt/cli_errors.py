"""The CLI's error convention, importable by every command module without importing the CLI itself.

A user error is one ``Error: ...`` line and exit code 1. An interruption -- Ctrl-C (SIGINT), SIGTERM
(``kill``, a job scheduler, ``docker stop``) or SIGHUP (a closed terminal) -- unwinds the stack like
Ctrl-C does, so every ``with``/``finally`` runs: ffmpeg is stopped and temporary files are removed.
It prints one ``Interrupted (SIGTERM); ...`` line and exits with 128 + the signal number.
"""

from __future__ import annotations

import functools
import logging
import signal
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click

from .errors import Wav2LipTrtError

NOTHING_WRITTEN = "no output was written"


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread by the handler of SIGINT, SIGTERM or SIGHUP."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _signals() -> list[signal.Signals]:
    return [getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)]


def setup_logging(quiet: bool, progress: str = "auto") -> None:
    """Info lines on stderr; with ``--quiet`` nothing below an error, Python warnings included.

    ``progress`` is ``--progress`` (see :mod:`wav2lip_trt.progress`): bars on a terminal, whole
    lines in a log, so every message, ``Error: ...`` included, starts a line of its own.
    """
    from .progress import set_mode

    logging.basicConfig(level=logging.ERROR if quiet else logging.INFO, format="%(message)s", stream=sys.stderr,
                        force=True)
    logging.captureWarnings(True)  # library warnings obey --quiet like log lines
    set_mode(progress)


def install_signal_handlers() -> None:
    """Turn SIGINT, SIGTERM and SIGHUP into :class:`Interrupted` in the main thread.

    The first signal wins: the handler ignores the three from then on, so cleanup (stopping
    ffmpeg, removing a temporary file) is not cut short by a second Ctrl-C or a repeated SIGTERM.
    A signal that is already ignored (``nohup`` ignores SIGHUP) stays ignored.
    """

    def handler(signum: int, frame: object) -> None:
        for sig in _signals():
            signal.signal(sig, signal.SIG_IGN)
        raise Interrupted(signum)

    for sig in _signals():
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, handler)


def interrupted_exit(exc: BaseException | None, what: str = NOTHING_WRITTEN) -> NoReturn:
    """Print ``Interrupted (SIGNAME); what.`` and exit with 128 + the signal number (130 for Ctrl-C)."""
    signum = getattr(exc, "signum", signal.SIGINT)
    click.echo(f"Interrupted ({signal.Signals(signum).name}); {what}.", err=True)
    sys.exit(128 + int(signum))


def kept_and_lost(kept: list[str], lost: list[str]) -> str:
    """What an interrupted command that writes several outputs leaves: the finished ones are kept."""
    if not kept:
        return NOTHING_WRITTEN
    return (f"kept {len(kept)} of {len(kept) + len(lost)} outputs: {', '.join(kept)}"
            + (f"; not written: {', '.join(lost)}" if lost else ""))


def user_errors(func: Callable[..., Any] | None = None, *, interrupted: str = NOTHING_WRITTEN) -> Any:
    """Turn a :class:`Wav2LipTrtError` into ``Error: ...`` on stderr and exit code 1, no traceback.

    ``interrupted`` says what an interruption leaves behind (for commands whose finished files are kept).
    """
    if func is None:
        return functools.partial(user_errors, interrupted=interrupted)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except Wav2LipTrtError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt as exc:
            interrupted_exit(exc, interrupted)

    return wrapper
