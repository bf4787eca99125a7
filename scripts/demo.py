"""``make demo``: lip-sync a synthetic talking face to synthetic speech with the real CLI.

Uses the released checkpoints from checkpoints/ when both are there; otherwise writes random-weight
checkpoints in the released format and says loudly that the lips will be meaningless.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from wav2lip_trt.random_weights import write_random_checkpoints
from wav2lip_trt.samples import write_talking_clip

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demo"


def main() -> int:
    video, audio = write_talking_clip(DEMO / "media", seconds=3.0, fps=25.0, width=256, height=192)
    wav2lip, s3fd = ROOT / "checkpoints" / "wav2lip.pth", ROOT / "checkpoints" / "s3fd.pth"
    if not (wav2lip.exists() and s3fd.exists()):
        wav2lip, s3fd = write_random_checkpoints(DEMO / "random-checkpoints", seed=0)
        bar = "!" * 78
        print(f"\n{bar}\n  checkpoints/wav2lip.pth and checkpoints/s3fd.pth not found: using RANDOM weights.\n"
              "  The pipeline runs end to end, but the lips are MEANINGLESS without the released\n"
              f"  checkpoints (see checkpoints/README.md).\n{bar}\n", flush=True)
    outfile = DEMO / "result.mp4"
    cmd = [sys.executable, "-m", "wav2lip_trt", "infer", "--checkpoint_path", str(wav2lip), "--s3fd-checkpoint", str(s3fd),
           "--face", str(video), "--audio", str(audio), "--outfile", str(outfile), "--on-missing-face", "previous"]
    print("$", " ".join(cmd[2:]).replace("wav2lip_trt", "wav2lip-trt", 1), flush=True)
    code = subprocess.call(cmd)
    if code == 0:
        print(f"\nDemo result: {outfile}")
    return code


if __name__ == "__main__":
    sys.exit(main())
