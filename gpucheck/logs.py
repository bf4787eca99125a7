"""Reading the tools' output: CSAN and sync-debug warnings, compute-sanitizer, pytest's junit-xml, nvidia-smi."""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import REPO

CSAN_REPORT = "CSAN detected a possible data race"
SYNC_WARNING = "called a synchronizing CUDA operation"
CHILD_FINISHED = "gpu-check child: run finished"
_SYNC_SITE = re.compile(r"^(?P<site>\S.*?:\d+): \w*Warning: " + re.escape(SYNC_WARNING), re.MULTILINE)
_CSAN_KERNEL = re.compile(r"^Access by stream (\d+) during kernel:\n(?P<op>\S+)", re.MULTILINE)
_CSAN_THREADS = re.compile(r"gpu-check child: sanitizer covered (\d+) worker thread")
_CSAN_UNCOVERED = re.compile(r"gpu-check child: thread (\S+) NOT covered by the sanitizer")
_SANITIZER_SUMMARY = re.compile(r"^=+ ERROR SUMMARY: (\d+) errors?", re.MULTILINE)
_SANITIZER_KIND = re.compile(r"^=+ (Invalid [^\n]+|Error: Race reported[^\n]*|Program hit [^\n]+|"
                             r"Uninitialized [^\n]+|Leaked [^\n]+)", re.MULTILINE)
_PYTEST_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?)\b")
_PYTEST_TIME = re.compile(r" in [\d.]+s\b")  # pytest's final line: "1 passed, 2 skipped in 3.10s"


def parse_sanitizer_log(text: str) -> dict[str, Any]:
    """CSAN reports in a child's log: their count and kernels, the threads covered, whether the run finished."""
    kernels = Counter(m.group("op") for m in _CSAN_KERNEL.finditer(text))
    threads = _CSAN_THREADS.findall(text)
    return {
        "reports": text.count(CSAN_REPORT),
        "kernels": dict(kernels.most_common()),
        "aborted_by_sanitizer": "CUDASanitizerErrors" in text,
        "worker_threads_covered": int(threads[-1]) if threads else None,
        "uncovered_threads": _CSAN_UNCOVERED.findall(text),
        "finished": CHILD_FINISHED in text,
    }


def parse_sync_warnings(text: str, repo: Path = REPO) -> dict[str, Any]:
    """Sync-debug warnings in a log: their count and the source lines (sites) that raised them."""
    sites: Counter[str] = Counter()
    prefix = str(repo) + os.sep
    for match in _SYNC_SITE.finditer(text):
        site = match.group("site")
        sites[site[len(prefix):] if site.startswith(prefix) else site] += 1
    count = text.count(SYNC_WARNING)
    if count > sum(sites.values()):
        sites["(no source line)"] += count - sum(sites.values())
    return {"warnings": count, "sites": dict(sites.most_common())}


def parse_compute_sanitizer(text: str) -> dict[str, Any]:
    """compute-sanitizer's ERROR SUMMARY, the kinds of errors it printed, and the pytest counts under it."""
    summaries = _SANITIZER_SUMMARY.findall(text)
    counts = Counter()
    for line in text.splitlines()[::-1]:  # pytest's last summary line
        found = _PYTEST_COUNT.findall(line)
        if found and _PYTEST_TIME.search(line):
            for n, word in found:
                counts[word.rstrip("s") if word.startswith("error") else word] += int(n)
            break
    kinds = [k.strip() for k in _SANITIZER_KIND.findall(text)]
    return {"errors": sum(int(s) for s in summaries) if summaries else None, "kinds": kinds,
            "tests_passed": counts["passed"], "tests_failed": counts["failed"] + counts["error"],
            "tests_skipped": counts["skipped"]}


def parse_junit(path: Path) -> dict[str, Any]:
    """Counts of a pytest junit-xml file and each skipped test with its reason."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for suite in suites:
        for key in counts:
            counts[key] += int(suite.get(key, 0))
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    skipped = []
    for case in root.iter("testcase"):
        skip = case.find("skipped")
        if skip is not None:
            name = f"{case.get('classname', '')}::{case.get('name', '')}".strip(":")
            skipped.append((name, (skip.get("message") or skip.text or "").strip()))
    return {"counts": counts, "skipped": skipped}


def parse_nvidia_smi(text: str) -> list[tuple[float, float | None]]:
    """``utilization.gpu, memory.used`` lines (csv, noheader, nounits) -> [(percent, MiB or None)]."""
    samples = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        try:
            util = float(parts[0])
        except (ValueError, IndexError):
            continue
        try:
            mem = float(parts[1]) if len(parts) > 1 else None
        except ValueError:
            mem = None
        samples.append((util, mem))
    return samples


def busy_stats(utils: Sequence[float], mems: Sequence[float | None] = ()) -> dict[str, Any]:
    """Busy fraction from utilisation samples (percent): over all samples, and between the first and
    last non-zero sample (the part of the run in which the GPU was used at all)."""
    utils = list(utils)
    stats: dict[str, Any] = {"samples": len(utils), "busy_fraction": None, "busy_fraction_active": None,
                             "max_percent": None, "peak_memory_used_mib": None}
    if utils:
        stats["busy_fraction"] = round(sum(utils) / len(utils) / 100.0, 4)
        stats["max_percent"] = max(utils)
        busy = [i for i, u in enumerate(utils) if u > 0]
        if busy:
            active = utils[busy[0]: busy[-1] + 1]
            stats["busy_fraction_active"] = round(sum(active) / len(active) / 100.0, 4)
    known = [m for m in mems if m is not None]
    if known:
        stats["peak_memory_used_mib"] = max(known)
    return stats


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("$ ")]
    return lines[-1][:300] if lines else "(no output)"
