"""The two lip-sync scoring networks as pure modules whose state dicts load the released files unchanged.

* :class:`SyncNetColor` is Wav2Lip's lip-sync expert (``SyncNet_color``, released as
  ``lipsync_expert.pth``): 5 lower-half faces and one mel chunk in, two L2-normalised 512-d
  embeddings out. Its layers are the repository's original ones (the 17-block face encoder),
  which is what the released keys describe.
* :class:`SyncNetV2` is syncnet_python's network ``S`` (``syncnet_v2.model``), behind the field's
  LSE-D / LSE-C numbers: 5 raw 224x224 BGR frames or 20 MFCC columns in, an unnormalised 1024-d
  feature out.

The visual quality discriminator (``Wav2Lip_disc_qual``) is :class:`wav2lip_trt.models.Wav2LipDiscQual`.
Layer order and indices (dropout-free ``Sequential`` slots included) are the originals', so the
state-dict keys match without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .conv import Conv2d

EXPERT_EMBEDDING = 512  # SyncNetColor embedding size
LSE_FEATURE = 1024  # SyncNetV2 feature size (num_layers_in_fc_layers)


def _res(channels: int) -> Conv2d:
    return Conv2d(channels, channels, 3, 1, 1, residual=True)


class SyncNetColor(nn.Module):
    """Wav2Lip's lip-sync expert.

    Inputs: mel (B, 1, 80, 16), Wav2Lip's normalised log-mel chunk; faces (B, 15, 48, 96), the lower
    halves of 5 consecutive 96x96 BGR faces in [0, 1], channels time-major (B0 G0 R0 B1 ... R4).
    Outputs: (audio, face) embeddings, each (B, 512), L2-normalised and non-negative (the last
    layer is a ReLU), so their cosine similarity lies in [0, 1].
    """

    def __init__(self) -> None:
        super().__init__()
        self.face_encoder = nn.Sequential(
            Conv2d(15, 32, 7, 1, 3),  # 48 x 96
            Conv2d(32, 64, 5, (1, 2), 1),  # 46 x 47
            _res(64),
            _res(64),
            Conv2d(64, 128, 3, 2, 1),  # 23 x 24
            _res(128),
            _res(128),
            _res(128),
            Conv2d(128, 256, 3, 2, 1),  # 12 x 12
            _res(256),
            _res(256),
            Conv2d(256, 512, 3, 2, 1),  # 6 x 6
            _res(512),
            _res(512),
            Conv2d(512, 512, 3, 2, 1),  # 3 x 3
            Conv2d(512, 512, 3, 1, 0),  # 1 x 1
            Conv2d(512, 512, 1, 1, 0),
        )
        self.audio_encoder = nn.Sequential(
            Conv2d(1, 32, 3, 1, 1),
            _res(32),
            _res(32),
            Conv2d(32, 64, 3, (3, 1), 1),  # 27 x 16
            _res(64),
            _res(64),
            Conv2d(64, 128, 3, 3, 1),  # 9 x 6
            _res(128),
            _res(128),
            Conv2d(128, 256, 3, (3, 2), 1),  # 3 x 3
            _res(256),
            _res(256),
            Conv2d(256, 512, 3, 1, 0),  # 1 x 1
            Conv2d(512, 512, 1, 1, 0),
        )

    def embed_audio(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, 1, 80, 16) mel chunks -> (B, 512) normalised audio embeddings."""
        out = self.audio_encoder(mel)
        return F.normalize(out.view(out.size(0), -1), p=2, dim=1)

    def embed_face(self, faces: torch.Tensor) -> torch.Tensor:
        """(B, 15, 48, 96) face windows -> (B, 512) normalised face embeddings."""
        out = self.face_encoder(faces)
        return F.normalize(out.view(out.size(0), -1), p=2, dim=1)

    def forward(self, mel: torch.Tensor, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.embed_audio(mel), self.embed_face(faces)


def _bn_relu2d(conv: nn.Conv2d) -> list[nn.Module]:
    return [conv, nn.BatchNorm2d(conv.out_channels), nn.ReLU()]


def _bn_relu3d(conv: nn.Conv3d) -> list[nn.Module]:
    return [conv, nn.BatchNorm3d(conv.out_channels), nn.ReLU()]


def _fc() -> nn.Sequential:
    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, LSE_FEATURE))


class SyncNetV2(nn.Module):
    """syncnet_python's ``S``: separate lip and audio towers trained with a contrastive loss.

    ``forward_lip``: (B, 3, 5, 224, 224) float32 raw 0-255 **BGR** pixels (no mean, no scaling)
    -> (B, 1024). ``forward_aud``: (B, 1, 13, 20) float32 MFCCs on the raw int16 scale (c0 =
    log energy) -> (B, 1024). Features are not normalised; LSE compares them by Euclidean
    distance. Only 224x224 frames fit: the last Conv3d (1x6x6) needs a 6x6 map.
    """

    def __init__(self) -> None:
        super().__init__()
        self.netcnnaud = nn.Sequential(
            *_bn_relu2d(nn.Conv2d(1, 64, 3, 1, 1)),
            nn.MaxPool2d(1, 1),
            *_bn_relu2d(nn.Conv2d(64, 192, 3, 1, 1)),
            nn.MaxPool2d(3, (1, 2)),
            *_bn_relu2d(nn.Conv2d(192, 384, 3, 1, 1)),
            *_bn_relu2d(nn.Conv2d(384, 256, 3, 1, 1)),
            *_bn_relu2d(nn.Conv2d(256, 256, 3, 1, 1)),
            nn.MaxPool2d(3, 2),
            *_bn_relu2d(nn.Conv2d(256, 512, (5, 4), 1, 0)),
        )
        self.netfcaud = _fc()
        self.netfclip = _fc()
        self.netcnnlip = nn.Sequential(
            *_bn_relu3d(nn.Conv3d(3, 96, (5, 7, 7), (1, 2, 2), 0)),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            *_bn_relu3d(nn.Conv3d(96, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1))),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
            *_bn_relu3d(nn.Conv3d(256, 256, (1, 3, 3), 1, (0, 1, 1))),
            *_bn_relu3d(nn.Conv3d(256, 256, (1, 3, 3), 1, (0, 1, 1))),
            *_bn_relu3d(nn.Conv3d(256, 256, (1, 3, 3), 1, (0, 1, 1))),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            *_bn_relu3d(nn.Conv3d(256, 512, (1, 6, 6), 1, 0)),
        )

    def forward_aud(self, mfcc: torch.Tensor) -> torch.Tensor:
        """(B, 1, 13, 20) MFCC windows -> (B, 1024) audio features."""
        mid = self.netcnnaud(mfcc)
        return self.netfcaud(mid.view(mid.size(0), -1))

    def forward_lip(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 3, 5, 224, 224) BGR 0-255 windows -> (B, 1024) lip features."""
        mid = self.netcnnlip(frames)
        return self.netfclip(mid.view(mid.size(0), -1))

    def forward(self, mfcc: torch.Tensor, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_aud(mfcc), self.forward_lip(frames)
