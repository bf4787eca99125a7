"""The operations ``bench --micro`` and ``benchmarks/test_hot_stages.py`` both time, defined once so
the two never drift apart. Inputs are synthetic and seeded; heavy imports wait for ``setup()``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .timing import Case


def _face_frames(count: int, height: int, width: int, seed: int) -> list:
    from ..samples import talking_face_frames

    return list(talking_face_frames(count, width, height, seed=seed))


def _centre_box(height: int, width: int) -> tuple[int, int, int, int]:
    """(y1, y2, x1, x2) of a face-sized box in the middle of the frame."""
    side = max(16, min(height, width) // 2)
    top, left = (height - side) // 2, (width - side) // 2
    return top, top + side, left, left + side


def synthetic_s3fd_outputs(batch: int, height: int, width: int, seed: int = 0) -> list:
    """Raw S3FD head outputs shaped like a real frame's: ~0.1 % of positions pass the 0.05 candidate
    score, plus one confident face per image at stride 16, so post-processing does real work."""
    import numpy as np
    import torch

    from ..models.s3fd import head_map_sizes

    rng = np.random.default_rng(seed)
    outputs = []
    for level, (h, w) in enumerate(head_map_sizes(height, width)):
        cls = np.zeros((batch, 2, h, w), dtype=np.float32)
        cls[:, 1] = rng.normal(-6.0, 1.0, (batch, h, w))
        if level == 2 and h > 2 and w > 2:
            cy, cx = h // 2, w // 2
            cls[:, 1, cy - 1 : cy + 2, cx - 1 : cx + 2] = rng.uniform(2.0, 4.0, (batch, 3, 3))
        reg = rng.normal(0.0, 0.5, (batch, 4, h, w)).astype(np.float32)
        outputs += [torch.from_numpy(cls), torch.from_numpy(reg)]
    return outputs


def hot_stage_cases(*, height: int = 360, width: int = 640, detect_batch: int = 16, generate_batch: int = 128,
                    audio_seconds: float = 10.0, boxes: int = 250, seed: int = 0) -> list[Case]:
    """The pipeline's CPU stages between the networks, at the pipeline's batch sizes."""

    def mel() -> Callable[[], object]:
        from ..audio import melspectrogram
        from ..samples import speechlike_audio

        wav = speechlike_audio(audio_seconds, seed=seed)
        return lambda: melspectrogram(wav)

    def postprocess() -> Callable[[], object]:
        from ..detect import choose_faces

        outputs = synthetic_s3fd_outputs(detect_batch, height, width, seed)
        return lambda: choose_faces(outputs)

    def crop() -> Callable[[], object]:
        import numpy as np

        from ..faces import crop_faces, generator_inputs

        frames = _face_frames(generate_batch, height, width, seed)
        box = [_centre_box(height, width)] * generate_batch
        mels = np.random.default_rng(seed).uniform(-4, 4, (generate_batch, 80, 16)).astype(np.float32)
        return lambda: generator_inputs(crop_faces(frames, box), mels)

    def paste() -> Callable[[], object]:
        import numpy as np

        from ..faces import paste_back, prediction_to_uint8

        frames = _face_frames(generate_batch, height, width, seed)
        box = _centre_box(height, width)
        pred = np.random.default_rng(seed).random((generate_batch, 3, 96, 96), dtype=np.float32)

        def run() -> None:
            for frame, face in zip(frames, prediction_to_uint8(pred)):
                paste_back(frame, face, box)

        return run

    def smoothing() -> Callable[[], object]:
        import numpy as np

        from ..boxes import smooth_stream

        rng = np.random.default_rng(seed)
        y1, y2, x1, x2 = _centre_box(height, width)
        rows = np.array([x1, y1, x2, y2]) + rng.integers(-3, 4, (boxes, 4))
        return lambda: list(smooth_stream(enumerate(rows)))

    size = f"{width}x{height}"
    return [
        Case("mel", int(audio_seconds), "s audio", mel),
        Case(f"postprocess-b{detect_batch}-{size}", detect_batch, "frames", postprocess),
        Case(f"crop-b{generate_batch}-{size}", generate_batch, "faces", crop),
        Case(f"paste-b{generate_batch}-{size}", generate_batch, "faces", paste),
        Case(f"smoothing-{boxes}", boxes, "boxes", smoothing),
    ]


def model_cases(checkpoint_path: Path, s3fd_checkpoint: Path, *, backend: str = "torch", device: str = "cpu",
                precision: str = "auto", engines_dir: Path = Path("engines"), s3fd_batch: int = 4,
                s3fd_size: tuple[int, int] = (240, 320), wav2lip_batches: Sequence[int] = (32, 128),
                seed: int = 0) -> list[Case]:
    """Both networks through one backend's runners on seeded inputs (the parity command's inputs)."""

    def runners() -> Any:
        import torch

        from ..backends import RunnerRequest, create_runners

        request = RunnerRequest(checkpoint_path=Path(checkpoint_path), s3fd_checkpoint=Path(s3fd_checkpoint),
                                device=torch.device(device), precision=precision, engines_dir=Path(engines_dir))
        return create_runners(backend, request)

    def timed_infer(model: str, feed_of: Callable[[], dict]) -> Callable[[], Callable[[], object]]:
        def setup() -> Callable[[], object]:
            made = runners()
            runner = made.detector if model == "s3fd" else made.generator
            feed = {k: v.to(runner.device) for k, v in feed_of().items()}
            if runner.device.type == "cuda":
                import torch

                def call() -> object:
                    out = runner.infer(feed)
                    torch.cuda.synchronize(runner.device)
                    return out

                return call
            return lambda: runner.infer(feed)

        return setup

    from ..parity import s3fd_feed, wav2lip_feed

    h, w = s3fd_size
    cases = [Case(f"s3fd-b{s3fd_batch}-{w}x{h}", s3fd_batch, "frames",
                  timed_infer("s3fd", lambda: s3fd_feed(s3fd_batch, h, w, seed)))]
    for batch in wav2lip_batches:
        cases.append(Case(f"wav2lip-b{batch}", batch, "faces",
                          timed_infer("wav2lip", lambda batch=batch: wav2lip_feed(batch, seed))))
    return cases
