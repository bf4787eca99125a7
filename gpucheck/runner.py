"""Running steps under one time budget, and their child processes under their own deadlines."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import REPO
from .verdicts import FAILED, NOT_RUN, PASSED, Verdict, not_run

LOG_HEAD_BYTES = 600_000  # a longer log keeps its head and tail (verdicts read the full text first)
LOG_TAIL_BYTES = 300_000


@dataclass
class StepResult:
    """One step of the check, as summary.json and summary.md report it."""

    name: str
    title: str
    status: str  # passed | failed | not run
    summary: str = ""  # one line: what was proven, or why it failed / did not run
    seconds: float = 0.0
    timeout_s: float | None = None
    required: bool = True  # counts towards PROVEN
    work: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)  # relative to the results folder
    markdown: list[str] = field(default_factory=list)  # extra lines for summary.md


@dataclass
class StepContext:
    """What a step function gets: where to write, how long it may take, shared state."""

    name: str
    out: Path
    work: Path
    timeout_s: float
    deadline: float  # on the runner's clock
    clock: Callable[[], float]
    state: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    markdown: list[str] = field(default_factory=list)

    def remaining(self) -> float:
        return max(0.0, self.deadline - self.clock())

    def add_file(self, path: Path) -> None:
        try:
            rel = str(Path(path).resolve().relative_to(self.out.resolve()))
        except ValueError:
            rel = str(path)
        if rel not in self.files:
            self.files.append(rel)


StepFn = Callable[[StepContext], Verdict]


@dataclass(frozen=True)
class Step:
    """A planned step: ``timeout_s`` is its cap (the caps of one run add up to at most the budget)."""

    name: str
    title: str
    fn: StepFn
    timeout_s: float
    min_s: float = 5.0
    needs: tuple[str, ...] = ()
    required: bool = True


class Runner:
    """Runs steps in order under one budget; a step starts only with ``min_s`` left (else NOT RUN, out of
    time) and may use ``min(timeout_s, what is left)``; one that outlives that is FAILED and left behind."""

    def __init__(self, out: Path, work: Path, budget_s: float, *, clock: Callable[[], float] = time.monotonic,
                 grace_s: float = 10.0, echo: Callable[[str], None] | None = None) -> None:
        self.out, self.work, self.budget_s, self.clock, self.grace_s = out, work, budget_s, clock, grace_s
        self.deadline = clock() + budget_s
        self.results: list[StepResult] = []
        self.state: dict[str, Any] = {}
        self.echo = echo or (lambda line: print(line, flush=True))

    def remaining(self) -> float:
        return self.deadline - self.clock()

    def status_of(self, name: str) -> str | None:
        return next((r.status for r in self.results if r.name == name), None)

    def not_run(self, step: Step, reason: str) -> StepResult:
        return self._record(StepResult(step.name, step.title, NOT_RUN, reason, 0.0, step.timeout_s, step.required))

    def run(self, step: Step) -> StepResult:
        for need in step.needs:
            status = self.status_of(need)
            if status != PASSED:
                return self.not_run(step, f"needs step '{need}', which {status or 'did not run'}")
        left = self.remaining()
        if left < step.min_s:
            return self.not_run(step, f"out of time: {max(left, 0):.0f} s of the {self.budget_s:.0f} s budget left, "
                                      f"the step needs at least {step.min_s:.0f} s")
        allowed = min(step.timeout_s, left)
        start = self.clock()
        ctx = StepContext(step.name, self.out, self.work, allowed, start + allowed, self.clock, self.state)
        outcome: dict[str, Any] = {}

        def target() -> None:
            try:
                outcome["verdict"] = step.fn(ctx)
            except BaseException as exc:  # noqa: BLE001  a broken step must not stop the others
                outcome["verdict"] = Verdict(FAILED, f"{type(exc).__name__}: {exc}")
                outcome["traceback"] = traceback.format_exc()

        self.echo(f"gpu-check: {step.name} ... (up to {allowed:.0f} s)")
        thread = threading.Thread(target=target, name=f"gpu-check-{step.name}", daemon=True)
        thread.start()
        thread.join(allowed + self.grace_s)
        seconds = self.clock() - start
        verdict = outcome.get("verdict")
        if thread.is_alive():
            verdict = Verdict(FAILED, f"timed out after {seconds:.0f} s (limit {allowed:.0f} s)")
        elif not isinstance(verdict, Verdict):
            verdict = not_run(f"the step returned no verdict ({verdict!r})")
        details = {**ctx.details, **verdict.details}
        if "traceback" in outcome:
            details["traceback"] = outcome["traceback"]
        return self._record(StepResult(step.name, step.title, verdict.status, verdict.reason, round(seconds, 2),
                                       round(allowed, 1), step.required, verdict.work, details, list(ctx.files),
                                       list(ctx.markdown)))

    def _record(self, result: StepResult) -> StepResult:
        self.results.append(result)
        self.echo(f"gpu-check: {result.name}: {result.status.upper()} ({result.seconds:.1f} s) {result.summary}")
        return result


@dataclass
class ProcResult:
    returncode: int | None
    timed_out: bool
    seconds: float
    text: str  # the whole log (before capping)


LIVE: set[subprocess.Popen] = set()  # children still running (killed if the check is interrupted)


def cap_log(path: Path, head: int = LOG_HEAD_BYTES, tail: int = LOG_TAIL_BYTES) -> None:
    """Keep a long log's head and tail so the results folder stays small."""
    size = path.stat().st_size
    if size <= head + tail:
        return
    with open(path, "rb") as f:
        first = f.read(head)
        f.seek(size - tail)
        last = f.read()
    path.write_bytes(first + f"\n[... gpu-check cut {size - head - tail} bytes ...]\n".encode() + last)


def run_logged(cmd: Sequence[object], log: Path, timeout_s: float, *, env: dict[str, str] | None = None,
               cwd: Path = REPO) -> ProcResult:
    """Run ``cmd`` (stdout and stderr to ``log``) in its own process group; kill the group on timeout."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(log, "wb") as f:
        f.write(("$ " + " ".join(str(c) for c in cmd) + "\n").encode())
        f.flush()
        proc = subprocess.Popen([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=cwd, env=env, start_new_session=True)
        LIVE.add(proc)
        timed_out = False
        try:
            proc.wait(timeout=max(timeout_s, 0.1))
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_group(proc)
        finally:
            LIVE.discard(proc)
        seconds = time.monotonic() - start
        if timed_out:
            f.write(f"\n[gpu-check: killed after {seconds:.0f} s (timeout {timeout_s:.0f} s)]\n".encode())
    text = log.read_text(errors="replace")
    cap_log(log)
    return ProcResult(None if timed_out else proc.returncode, timed_out, round(seconds, 2), text)


def kill_group(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=5.0)
            return
        except subprocess.TimeoutExpired:
            continue
