from __future__ import annotations

import cv2
import numpy as np
import torch

from wav2lip_trt.faces import crop_faces, generator_inputs, paste_back, prediction_to_uint8


def test_generator_inputs_match_reference_arithmetic() -> None:
    rng = np.random.default_rng(1)
    faces = rng.integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)
    mels = rng.uniform(-4, 4, (3, 80, 16)).astype(np.float32)
    mel, face = generator_inputs(faces, mels)
    masked = faces.copy()
    masked[:, 48:] = 0
    expected = (np.concatenate((masked, faces), axis=3) / 255.0).transpose(0, 3, 1, 2).astype(np.float32)
    assert face.dtype == mel.dtype == torch.float32
    np.testing.assert_array_equal(face.numpy(), expected)
    np.testing.assert_array_equal(mel.numpy(), mels[:, None])
    assert face.shape == (3, 6, 96, 96) and mel.shape == (3, 1, 80, 16)
    assert (face[:, :3, 48:] == 0).all() and (face[:, 3:, 48:] > 0).any()


def test_prediction_truncates_not_rounds() -> None:
    pred = np.full((1, 3, 96, 96), 0.9999, dtype=np.float32)
    pred[0, :, 0, 0] = [0.0, 1.0, 100.7 / 255]
    out = prediction_to_uint8(pred)
    assert out.shape == (1, 96, 96, 3)
    assert out[0, 0, 0].tolist() == [0, 255, 100]
    assert out[0, 5, 5, 0] == 254


def test_crop_and_paste_use_opencv_linear() -> None:
    rng = np.random.default_rng(2)
    frame = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    box = (10, 50, 20, 70)
    crop = crop_faces([frame], [box])[0]
    np.testing.assert_array_equal(crop, cv2.resize(frame[10:50, 20:70], (96, 96)))
    face = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    out = frame.copy()
    paste_back(out, face, box)
    np.testing.assert_array_equal(out[10:50, 20:70], cv2.resize(face, (50, 40)))
    untouched = np.ones(frame.shape[:2], bool)
    untouched[10:50, 20:70] = False
    np.testing.assert_array_equal(out[untouched], frame[untouched])
