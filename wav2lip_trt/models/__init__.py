"""Pure PyTorch networks whose state dicts match the released checkpoints key for key."""

from .s3fd import S3FD, L2Norm
from .syncnet import SyncNetColor, SyncNetV2
from .wav2lip import Wav2Lip, Wav2LipDiscQual

__all__ = ["S3FD", "L2Norm", "SyncNetColor", "SyncNetV2", "Wav2Lip", "Wav2LipDiscQual"]
