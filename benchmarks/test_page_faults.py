"""No page-fault tax on the CPU (issue 21): a 13 s ``--box`` run at 320x240 reuses its memory.

Goals: at most 1,000 minor page faults per output frame and system time at most 10 % of CPU time,
for the job itself (``--json`` ``resources``, models loaded: the steady state) and for the whole
process (imports, model loading and ffmpeg included, as ``/usr/bin/time`` counts them). Faults and
system time do not depend on other load on the machine. With glibc's mmap threshold fixed at 1 MiB
(the policy before) the process took ~27,000 faults a frame and a third of its CPU time in the
kernel. Run with ``pytest benchmarks/test_page_faults.py`` (~30 s on 2 idle cores).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from wav2lip_trt.measure import run_measured
from wav2lip_trt.random_weights import write_random_checkpoints
from wav2lip_trt.samples import write_talking_clip


def test_a_steady_cpu_run_takes_few_page_faults(tmp_path: Path) -> None:
    wav2lip, _ = write_random_checkpoints(tmp_path / "ck")
    face, audio = write_talking_clip(tmp_path / "clip", seconds=13.0, fps=25.0, width=320, height=240)
    report = tmp_path / "run.json"
    m = run_measured([sys.executable, "-m", "wav2lip_trt", "infer", "-q", "--device", "cpu", "--checkpoint_path",
                      str(wav2lip), "--face", str(face), "--audio", str(audio), "--outfile", str(tmp_path / "out.mp4"),
                      "--box", "30", "210", "80", "240", "--json", str(report)])
    assert m.returncode == 0, m.stderr
    run = json.loads(report.read_text())
    job = run["resources"]
    assert job["minor_faults_per_frame"] <= 1000, job
    assert job["sys_share"] <= 0.10, job
    assert m.minor_faults / run["frames"] <= 1000, (m.minor_faults, run["frames"])
    assert m.sys_share <= 0.10, (m.user_seconds, m.sys_seconds)
