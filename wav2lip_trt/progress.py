"""The progress display of a run: the current phase, then a bar of frames with a rate and an ETA.

The pipeline reports ``phase(label)`` ("loading models", "detecting faces", "lip-syncing"),
``start(total)`` once the frame count is known and ``update(done)`` per written frame. Before
``start`` the label is shown with the time spent in it, so the user sees what is happening while
models load; afterwards the label is the bar's description.

Frames arrive in bursts of a generator batch after a slow first batch, so an ETA from the first
frames is absurd (``1/297 [00:14<1:13:51]``). The rate is the average since ``start`` (no
smoothing), and the ETA is shown only once frames have flowed for a few seconds, or at the end.
Silent with ``--quiet`` (``enabled=False``).
"""

from __future__ import annotations

import sys
import threading
import time
from contextlib import ExitStack
from types import TracebackType

from tqdm import tqdm

WARM_SECONDS = 3.0  # frames must have flowed this long before an ETA is shown
TICK_SECONDS = 1.0  # how often a terminal display is redrawn while nothing else happens
PHASE_FORMAT = "{desc}... {elapsed}"
EARLY_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}]"
FULL_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]"


class Progress:
    """A phase label, then a frame bar; ``update`` takes the running count, not a delta."""

    def __init__(self, description: str, *, unit: str = "it", enabled: bool = True) -> None:
        self.description, self.unit, self.enabled = description, unit, enabled
        self._bar: tqdm | None = None
        self._counting = False  # the bar counts frames (after start)
        self._first_frame: float | None = None
        self._warm = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._stack = ExitStack()

    # --- callbacks --------------------------------------------------------------------------------

    def phase(self, label: str) -> None:
        """Show ``label``: as the bar's description once counting, else as a line with its elapsed time."""
        self.description = label
        if not self.enabled:
            return
        with self._lock:
            if self._bar is None:
                self._bar = self._new_bar(total=None, bar_format=PHASE_FORMAT)
            elif self._counting:
                self._bar.set_description_str(label, refresh=True)
            else:  # a new phase restarts its clock
                self._bar.close()
                self._bar = self._new_bar(total=None, bar_format=PHASE_FORMAT)
        self._start_ticker()

    def start(self, total: int | None) -> None:
        """The frame count is known: replace the phase line with a bar of ``total`` frames."""
        if not self.enabled:
            return
        with self._lock:
            if self._bar is not None:
                self._bar.leave = False
                self._bar.close()
            self._bar = self._new_bar(total=total, bar_format=EARLY_FORMAT if total else FULL_FORMAT)
            self._counting, self._first_frame, self._warm = True, None, not total
        self._start_ticker()

    def update(self, done: int) -> None:
        """``done`` frames are finished (a running count)."""
        with self._lock:
            bar = self._bar
            if bar is None or not self._counting:
                return
            now = time.monotonic()
            if self._first_frame is None:
                self._first_frame = now
            if not self._warm and (done >= (bar.total or 0) or now - self._first_frame >= WARM_SECONDS):
                self._warm = True
                bar.bar_format = FULL_FORMAT
            bar.update(done - bar.n)

    # --- plumbing ---------------------------------------------------------------------------------

    def _new_bar(self, *, total: int | None, bar_format: str) -> tqdm:
        return tqdm(total=total, desc=self.description, unit=self.unit, dynamic_ncols=True, leave=True,
                    smoothing=0, bar_format=bar_format, file=sys.stderr)

    def _start_ticker(self) -> None:
        """On a terminal, redraw once a second so the elapsed time moves while models load."""
        if self._ticker is not None or not _is_terminal():
            return
        self._ticker = threading.Thread(target=self._tick, name="wav2lip-trt-progress", daemon=True)
        self._ticker.start()

    def _tick(self) -> None:
        while not self._stop.wait(TICK_SECONDS):
            with self._lock:
                if self._bar is not None:
                    self._bar.refresh()

    def __enter__(self) -> "Progress":
        if self.enabled:
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._stack.enter_context(logging_redirect_tqdm())  # log lines print above the bar, not through it
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        with self._lock:
            if self._bar is not None:
                if exc_type is not None or not self._counting:
                    self._bar.leave = False  # an error line follows; a half bar above it only confuses
                self._bar.close()
                self._bar = None
        self._stack.close()


def _is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
