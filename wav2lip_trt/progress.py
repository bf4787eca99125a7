"""A progress bar with a rate (frames/s) for long work, silent with ``--quiet``."""

from __future__ import annotations

from types import TracebackType

from tqdm import tqdm


class Progress:
    """Started with the total once known; ``update`` takes the running count, not a delta."""

    def __init__(self, description: str, *, unit: str = "it", enabled: bool = True) -> None:
        self.description, self.unit, self.enabled = description, unit, enabled
        self._bar: tqdm | None = None

    def start(self, total: int | None) -> None:
        if self.enabled:
            self._bar = tqdm(total=total, desc=self.description, unit=self.unit, dynamic_ncols=True, leave=True)

    def update(self, done: int) -> None:
        if self._bar is not None:
            self._bar.update(done - self._bar.n)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.close()
