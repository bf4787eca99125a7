"""summary.json and summary.md: the headline first, then the environment, every step with its verdict, and
each step's own tables."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .environment import environment_rows, utc_now
from .runner import StepResult
from .verdicts import STATUSES, headline


def cell(value: object) -> str:
    return ("" if value is None else str(value)).replace("\n", " ").replace("|", "\\|")


def write_summary(out: Path, steps: Sequence[StepResult], env: dict[str, Any], *, budget_s: float | None = None,
                  started_utc: str | None = None, seconds: float | None = None) -> dict[str, Any]:
    """Write ``summary.json`` and ``summary.md`` into ``out``; returns the JSON document."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rehearsal = bool(env.get("rehearsal"))
    first = headline(steps, rehearsal=rehearsal)
    counts = {s: sum(1 for step in steps if step.status == s) for s in STATUSES}
    doc = {"check": "gpu-check", "format": 2, "headline": first, "proven": first.startswith("PROVEN"),
           "counts": counts, "started_utc": started_utc, "finished_utc": utc_now(), "seconds": seconds,
           "budget_s": budget_s, "env": env, "steps": [asdict(s) for s in steps]}
    (out / "summary.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")

    timing = f"{seconds:.0f} s" if seconds is not None else "? s"
    lines = [first, "", "# gpu-check", "",
             f"Started {started_utc or '?'} (UTC), took {timing}" + (f" of a {budget_s:.0f} s budget" if budget_s else "")
             + f"; {counts['passed']} passed, {counts['failed']} failed, {counts['not run']} not run.",
             "", "## Steps", "", "| step | required | verdict | seconds (cap) | why | files |", "|---|---|---|---|---|---|"]
    for step in steps:
        files = ", ".join(f"`{f}`" for f in step.files)
        cap = f" ({step.timeout_s:.0f})" if step.timeout_s else ""
        lines.append(f"| {cell(step.name)} | {'yes' if step.required else 'no'} | {step.status.upper()} | "
                     f"{step.seconds:.1f}{cap} | {cell(step.summary)} | {cell(files)} |")
    lines += ["", "## Environment", "", "| | |", "|---|---|"]
    lines += [f"| {cell(k)} | {cell(v)} |" for k, v in environment_rows(env)]
    for step in steps:
        if step.markdown:
            lines += ["", f"## {step.title}", ""] + step.markdown
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    return doc
