"""What a bare GPU host lacks, how it gets there (``make gpu-stage``), and the children's environment there.

The host has no network and takes at most 64 MiB per upload, one upload per GPU-machine run, and the
check has two runs. ../shared/gpu/stage's wheel batches would need four uploads for an ffmpeg (28 MiB)
and TensorRT-RTX (91 MiB), so the wheels are unpacked here into site folders and packed with xz: the
ffmpeg's archive rides with run 1, TensorRT-RTX's is cut in two pieces, one riding with each run; the
host unpacks an archive into /tmp/site once all its pieces are there (gpucheck/unpack.sh). /tmp lasts
while the machine is held, so run 2 must follow run 1 on the same machine; if it does not, the
experiment is NOT RUN and says why. DALI (about 200 MiB of wheels) does not fit: its step is NOT RUN.

    python3 -m gpucheck.staging       # = make gpu-stage: .gpu/run1 and .gpu/run2, what each run uploads
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

from . import REPO

STAGED_SITE = Path("/tmp/site")  # where unpack.sh (and ../shared/gpu/stage's recv.sh) install on the host

WHEEL_SETS: dict[str, tuple[str, ...]] = {
    # Run 1: an ffmpeg for the clips and the encoder. infer --score needs nothing more; `score`'s MFCCs
    # (python_speech_features) have no wheel, so the GPU tests that need them are listed as not run.
    "check": ("imageio-ffmpeg==0.7.0",),
    # Run 2: TensorRT-RTX's runtime and bindings, to learn whether its engines build on SM90 (first piece in run 1).
    "rtx": ("tensorrt-rtx-cu13-libs==1.7.1.116", "tensorrt-rtx-cu13-bindings==1.7.1.116"),
}

# Distribution -> module, for the environment table and the deps step.
MODULES = {
    "torch": "torch", "triton": "triton", "numpy": "numpy", "opencv-python-headless": "cv2", "click": "click",
    "tqdm": "tqdm", "imageio-ffmpeg": "imageio_ffmpeg", "python_speech_features": "python_speech_features",
    "cupy": "cupy", "onnxruntime": "onnxruntime", "pytest": "pytest", "nvidia-dali": "nvidia.dali",
    "tensorrt-rtx": "tensorrt_rtx", "soxr": "soxr",
}
NEEDED = ("torch", "numpy", "opencv-python-headless", "click", "tqdm", "pytest")
STAGED = ("imageio-ffmpeg",)  # needed, and carried by run 1


def importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_runtime() -> list[str]:
    """What the check's steps need and this Python cannot import, each with the staging command."""
    missing = [f"{name} (in the host's image: not importable)" for name in NEEDED if not importable(MODULES[name])]
    for name in STAGED:
        if not importable(MODULES[name]):
            missing.append(f"{name} (stage it: make gpu-stage, then carry .gpu/run1)")
    return missing


def child_env(**extra: str) -> dict[str, str]:
    """The children's environment: PYTHONPATH with the repository and /tmp/site first."""
    env = dict(os.environ)
    paths = [str(REPO)] + ([str(STAGED_SITE)] if STAGED_SITE.is_dir() else [])
    paths += [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p not in paths]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    env.update(extra)
    return env


CACHE = Path(os.environ.get("GPU_CHECK_CACHE", Path.home() / ".cache" / "gpucheck"))
UPLOAD = REPO / ".gpu"
FIRST_PIECE_BYTES = 34 * 2**20  # TensorRT-RTX's first piece: run 1 carries it beside the ffmpeg archive


def download(wheels: tuple[str, ...], into: Path) -> list[Path]:
    """The cp312 x86-64 wheels the host's Python takes (no dependencies: each is named)."""
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
                    "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64", "--platform",
                    "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64", "-d", str(into), *wheels], check=True)
    found = []
    for spec in wheels:
        name, version = spec.split("==")
        prefix = f"{name.replace('-', '_').lower()}-{version}-"
        found += [p for p in into.glob("*.whl") if p.name.lower().startswith(prefix)]
    return found


def extract_wheel(wheel: Path, site: Path) -> None:
    """A wheel's files into ``site`` with their permission bits (zipfile drops them; imageio-ffmpeg's
    binary must stay executable)."""
    import zipfile

    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            path = Path(z.extract(info, site))
            mode = (info.external_attr >> 16) & 0o777
            if mode and not info.is_dir():
                path.chmod(mode)


def pack(wheel_set: str) -> Path:
    """``CACHE/<set>.tar.xz``: the set's wheels unpacked as a site folder (a wheel's files are its install)."""
    archive = CACHE / f"{wheel_set}.tar.xz"
    if archive.is_file():
        return archive
    site = CACHE / f"site-{wheel_set}"
    for wheel in download(WHEEL_SETS[wheel_set], CACHE / "wheels"):
        extract_wheel(wheel, site)
    partial = archive.with_name(archive.name + ".partial")
    tar = subprocess.run(["tar", "-C", str(site), "-cf", "-", "."], stdout=subprocess.PIPE, check=True).stdout
    with open(partial, "wb") as f:  # xz itself: threaded, and several times faster than the lzma module
        subprocess.run(["xz", "-T0", "-6", "-c"], input=tar, stdout=f, check=True)
    partial.rename(archive)
    return archive


def pieces(archive: Path, first: int | None) -> list[bytes]:
    data = archive.read_bytes()
    return [data] if first is None or first >= len(data) else [data[:first], data[first:]]


def write_uploads(archives: dict[str, Path], upload: Path, first_piece: int = FIRST_PIECE_BYTES) -> dict[str, int]:
    """``upload/run1`` and ``upload/run2``: run 1 carries the check's archive whole and the first piece of
    the others, run 2 their second pieces; each with the manifest (name, pieces, SHA-256) and unpack.sh."""
    import hashlib

    split = {name: pieces(path, None if name == "check" else first_piece) for name, path in archives.items()}
    manifest = [f"{name}.tar.xz {len(parts)} {hashlib.sha256(b''.join(parts)).hexdigest()}" for name, parts in split.items()]
    shutil.rmtree(upload, ignore_errors=True)
    sizes = {}
    for run in ("run1", "run2"):
        folder = upload / run
        folder.mkdir(parents=True)
        for name, parts in split.items():
            for k, part in enumerate(parts, start=1):
                if (k == 1) == (run == "run1"):
                    (folder / f"{name}.tar.xz.part{k}").write_bytes(part)
        (folder / "MANIFEST").write_text("\n".join(manifest) + "\n")
        shutil.copy(Path(__file__).with_name("unpack.sh"), folder / "unpack.sh")
        sizes[run] = sum(p.stat().st_size for p in folder.iterdir())
    return sizes


def stage() -> int:
    """Fill ./.gpu/run1 and ./.gpu/run2 (git-ignored) with what each run uploads."""
    sizes = write_uploads({name: pack(name) for name in WHEEL_SETS}, UPLOAD)
    for run, size in sizes.items():
        print(f"gpu-stage: .gpu/{run} holds {size / 2**20:.1f} MiB (carry .gpu/{run} with run {run[-1]})")
    exclude = REPO / ".git" / "info" / "exclude"
    if exclude.parent.is_dir() and "/.gpu/" not in (exclude.read_text() if exclude.is_file() else ""):
        with open(exclude, "a") as f:
            f.write("/.gpu/\n")
    return 0


if __name__ == "__main__":
    sys.exit(stage())
