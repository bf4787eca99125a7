"""The progress display of a run: the step it is in, then a count with a rate and an ETA.

The run reports ``phase(label)`` when a step begins ("loading models", "detecting faces",
"lip-syncing"), ``start(total)`` once the step's count is known, ``update(done)`` as it advances
(a running count, never a delta) and ``relabel(label)`` to rename the step without restarting it
(a batch's "lip-syncing (2 workers ready)").

Two displays, chosen by ``--progress`` (:func:`set_mode`):

- **bars** (on a terminal; ``--progress on``): a tqdm line redrawn in place. Before ``start`` the
  label is shown with the time spent in it, so the user sees what is happening while models load.
  Frames arrive in bursts, so an ETA from the first frames is absurd (``1/297 [00:14<1:13:51]``):
  the rate is the average since ``start`` and the ETA is shown once frames have flowed a few seconds.
- **lines** (``--progress off``; by default when stderr is a file or a pipe, as in CI and scripts):
  whole lines only, never a carriage return, so every other message (a warning, ``Error: ...``)
  starts a line of its own and ``grep '^Error:' log`` finds it. A step prints ``label...`` when it
  begins, ``label: done/total frames, rate, ETA`` every :data:`LINE_SECONDS` while it counts, and
  ``label: done/total frames in 4.1 s`` when it ends.

Silent with ``--quiet`` (``enabled=False``).
"""

from __future__ import annotations

import sys
import threading
import time
from contextlib import ExitStack
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tqdm import tqdm

MODES = ("auto", "on", "off")
LIP_SYNC_PHASE = "lip-syncing"  # the step whose counts are output frames (detection counts input frames)
"""``--progress``: auto = bars on a terminal and lines elsewhere; on = bars; off = lines."""
WARM_SECONDS = 3.0  # frames must have flowed this long before an ETA is shown
TICK_SECONDS = 1.0  # how often a terminal display is redrawn while nothing else happens
LINE_SECONDS = 10.0  # how often a log gets a line with the count while a step counts
PHASE_FORMAT = "{desc}... {elapsed}"
EARLY_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}]"
FULL_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]"

_mode = "auto"


def set_mode(mode: str) -> None:
    """The display of every :class:`Progress` of this process that names none: the CLI's ``--progress``.

    Process-wide, like the logging configuration it sits beside (``setup_logging``): what a
    terminal shows is the process's concern, not the library's.
    """
    global _mode
    if mode not in MODES:
        raise ValueError(f"progress mode {mode!r}: expected one of {', '.join(MODES)}")
    _mode = mode


def draws_bars(mode: str | None = None) -> bool:
    """Whether ``mode`` (default: :func:`set_mode`'s) draws bars here: on, or auto on a terminal."""
    mode = mode or _mode
    return mode == "on" or (mode == "auto" and _is_terminal())


class Progress:
    """A step's label, then its count; ``update`` takes the running count, not a delta. Thread-safe."""

    def __init__(self, description: str, *, unit: str = "it", enabled: bool = True, mode: str | None = None) -> None:
        self.description, self.unit, self.enabled = description, unit, enabled
        self._display: _Bars | _Lines | None = None
        if enabled:
            self._display = _Bars(unit) if draws_bars(mode) else _Lines(unit)
        self._lock = threading.Lock()
        self._closed = False

    @property
    def bars(self) -> bool:
        return isinstance(self._display, _Bars)

    # --- callbacks --------------------------------------------------------------------------------

    def phase(self, label: str) -> None:
        """A new step begins: the one before it ends (with its count, if it counted)."""
        self.description = label
        with self._lock:
            if self._display is not None and not self._closed:
                self._display.phase(label)

    def relabel(self, label: str) -> None:
        """Rename the current step; its clock and count go on."""
        self.description = label
        with self._lock:
            if self._display is not None and not self._closed:
                self._display.relabel(label)

    def start(self, total: int | None) -> None:
        """The current step counts ``total`` items (None: unknown) from now."""
        with self._lock:
            if self._display is not None and not self._closed:
                self._display.start(self.description, total)

    def update(self, done: int) -> None:
        """``done`` items of the current step are finished (a running count; a smaller one is ignored)."""
        with self._lock:
            if self._display is not None and not self._closed:
                self._display.update(done)

    def close(self, failed: bool = False) -> None:
        """End the display. A failed run prints no end line, and the next line (its error) starts a line."""
        with self._lock:
            if self._display is None or self._closed:
                return
            self._closed = True
            self._display.close(failed)

    def __enter__(self) -> "Progress":
        if self._display is not None:
            self._display.enter()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(failed=exc_type is not None)


class _Lines:
    """Whole lines for a log: a step's start, its count every :data:`LINE_SECONDS`, its end."""

    def __init__(self, unit: str) -> None:
        self.unit = unit
        self.label: str | None = None
        self.began = self.counted_from = self.said = 0.0
        self.counting, self.total, self.done = False, None, 0

    def enter(self) -> None:
        pass

    def phase(self, label: str) -> None:
        self._end()
        self.label, self.began = label, time.monotonic()
        self.said, self.counting, self.total, self.done = self.began, False, None, 0
        _say(f"{label}...")

    def relabel(self, label: str) -> None:
        if self.label is None:
            self.phase(label)
            return
        self.label = label
        _say(f"{label} ({self._count()})" if self.counting else f"{label}...")

    def start(self, label: str, total: int | None) -> None:
        if self.label is None:
            self.phase(label)
        self.counting, self.total, self.done = True, total, 0
        self.counted_from = self.said = time.monotonic()

    def update(self, done: int) -> None:
        if not self.counting or done <= self.done:
            return
        self.done = done
        now = time.monotonic()
        if now - self.said >= LINE_SECONDS and (self.total is None or done < self.total):
            self.said = now
            rate = done / max(now - self.counted_from, 1e-9)
            eta = f", about {_clock((self.total - done) / rate)} left" if self.total else ""
            _say(f"{self.label}: {self._count()}, {rate:.1f} {self.unit}s/s{eta}")

    def close(self, failed: bool) -> None:
        if not failed:
            self._end()
        self.label = None

    def _end(self) -> None:
        if self.label is None:
            return
        seconds = time.monotonic() - self.began
        _say(f"{self.label}: {self._count()} in {seconds:.1f} s" if self.counting else f"{self.label}: {seconds:.1f} s")
        self.label = None

    def _count(self) -> str:
        return f"{self.done}/{self.total} {self.unit}s" if self.total else f"{self.done} {self.unit}s"


class _Bars:
    """tqdm lines redrawn in place, for a terminal."""

    def __init__(self, unit: str) -> None:
        self.unit = unit
        self.bar: tqdm | None = None
        self.counting = False  # the bar counts (after start)
        self.first: float | None = None  # when the first item was counted
        self.warm = False
        self.stop = threading.Event()
        self.ticker: threading.Thread | None = None
        self.lock = threading.Lock()
        self.stack = ExitStack()

    def enter(self) -> None:
        from tqdm.contrib.logging import logging_redirect_tqdm

        self.stack.enter_context(logging_redirect_tqdm())  # log lines print above the bar, not through it

    def phase(self, label: str) -> None:
        with self.lock:
            if self.bar is not None:
                self.bar.close()  # a finished step keeps its line
            self.bar = self._new(label, total=None, bar_format=PHASE_FORMAT)
            self.counting = False
        self._start_ticker()

    def relabel(self, label: str) -> None:
        if self.bar is None:
            self.phase(label)
            return
        with self.lock:
            self.bar.set_description_str(label, refresh=True)

    def start(self, label: str, total: int | None) -> None:
        with self.lock:
            if self.bar is not None:
                self.bar.leave = self.counting  # a phase line gives way to its bar; a finished count stays
                self.bar.close()
            self.bar = self._new(label, total=total, bar_format=EARLY_FORMAT if total else FULL_FORMAT)
            self.counting, self.first, self.warm = True, None, not total
        self._start_ticker()

    def update(self, done: int) -> None:
        with self.lock:
            bar = self.bar
            if bar is None or not self.counting or done <= bar.n:
                return
            now = time.monotonic()
            if self.first is None:
                self.first = now
            if bar.total is not None and done > bar.total:
                bar.total = done  # the total was an estimate (a container's frame count)
            if not self.warm and (done >= (bar.total or 0) or now - self.first >= WARM_SECONDS):
                self.warm = True
                bar.bar_format = FULL_FORMAT
            bar.update(done - bar.n)

    def close(self, failed: bool) -> None:
        self.stop.set()
        if self.ticker is not None:
            self.ticker.join()
        with self.lock:
            if self.bar is not None:
                if failed or not self.counting:
                    self.bar.leave = False  # an error line follows; a half bar above it only confuses
                self.bar.close()
                if failed and not _is_terminal():
                    _say("")  # a cleared bar in a file leaves the cursor mid-line: the error gets its own line
                self.bar = None
        self.stack.close()

    def _new(self, label: str, *, total: int | None, bar_format: str) -> tqdm:
        from tqdm import tqdm

        return tqdm(total=total, desc=label, unit=self.unit, dynamic_ncols=True, leave=True,
                    smoothing=0, bar_format=bar_format, file=sys.stderr)

    def _start_ticker(self) -> None:
        """On a terminal, redraw once a second so the elapsed time moves while models load."""
        if self.ticker is not None or not _is_terminal():
            return
        self.ticker = threading.Thread(target=self._tick, name="wav2lip-trt-progress", daemon=True)
        self.ticker.start()

    def _tick(self) -> None:
        while not self.stop.wait(TICK_SECONDS):
            with self.lock:
                if self.bar is not None:
                    self.bar.refresh()


def _say(line: str) -> None:
    """One whole line on stderr (looked up now, so a redirected stderr is honoured)."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
