from __future__ import annotations

from pathlib import Path

import numpy as np

from wav2lip_trt.dump import IntermediateDump


def test_appended_npy_reads_back_with_final_shape(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    parts = [rng.random((n, 3, 4), dtype=np.float32) for n in (5, 1, 7)]
    with IntermediateDump(tmp_path) as dump:
        for p in parts:
            dump.append("pred", p)
        dump.append("boxes", np.array([[1, 2, 3, 4]], dtype=np.int64))
        dump.save("mel", np.ones((80, 9), dtype=np.float32))
    np.testing.assert_array_equal(np.load(tmp_path / "pred.npy"), np.concatenate(parts))
    boxes = np.load(tmp_path / "boxes.npy")
    assert boxes.dtype == np.int64 and boxes.tolist() == [[1, 2, 3, 4]]
    assert np.load(tmp_path / "mel.npy").shape == (80, 9)


def test_header_survives_large_counts(tmp_path: Path) -> None:
    with IntermediateDump(tmp_path) as dump:
        for _ in range(1000):
            dump.append("rows", np.zeros((1000, 1), dtype=np.uint8))
    assert np.load(tmp_path / "rows.npy", mmap_mode="r").shape == (1_000_000, 1)
