"""The Wav2Lip generator and its visual-quality discriminator.

Layer order, paddings and the decoder's concatenation order reproduce the original network
exactly, so the released checkpoints load strictly and give the same numbers.
"""

from __future__ import annotations

import torch
from torch import nn

from .conv import Conv2d, Conv2dTranspose, NonormConv2d


def _res(channels: int) -> Conv2d:
    return Conv2d(channels, channels, 3, 1, 1, residual=True)


def _up(cin: int, cout: int) -> Conv2dTranspose:
    return Conv2dTranspose(cin, cout, 3, 2, 1, output_padding=1)


def _fold_time(x: torch.Tensor, time_dim: int) -> torch.Tensor:
    """Stacks the T steps along the batch, step-major (all of step 0 first), like training did."""
    return torch.cat(torch.unbind(x, dim=time_dim), dim=0)


class Wav2Lip(nn.Module):
    """Generator: a mel window and a masked + reference face in, the lower-face-synced face out.

    Inputs (4-D, inference): mel (B, 1, 80, 16), face (B, 6, 96, 96) in [0, 1] with channels
    masked BGR then reference BGR. Output (B, 3, 96, 96) in (0, 1), BGR. The 5-D training
    layout (mel (B, T, 1, 80, 16), face (B, 6, T, 96, 96)) gives (B, 3, T, 96, 96).
    """

    def __init__(self) -> None:
        super().__init__()
        self.face_encoder_blocks = nn.ModuleList(
            [
                nn.Sequential(Conv2d(6, 16, 7, 1, 3)),  # 96
                nn.Sequential(Conv2d(16, 32, 3, 2, 1), _res(32), _res(32)),  # 48
                nn.Sequential(Conv2d(32, 64, 3, 2, 1), _res(64), _res(64), _res(64)),  # 24
                nn.Sequential(Conv2d(64, 128, 3, 2, 1), _res(128), _res(128)),  # 12
                nn.Sequential(Conv2d(128, 256, 3, 2, 1), _res(256), _res(256)),  # 6
                nn.Sequential(Conv2d(256, 512, 3, 2, 1), _res(512)),  # 3
                nn.Sequential(Conv2d(512, 512, 3, 1, 0), Conv2d(512, 512, 1, 1, 0)),  # 1
            ]
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
            Conv2d(256, 512, 3, 1, 0),  # 1 x 1
            Conv2d(512, 512, 1, 1, 0),
        )
        self.face_decoder_blocks = nn.ModuleList(
            [
                nn.Sequential(Conv2d(512, 512, 1, 1, 0)),  # 1
                nn.Sequential(Conv2dTranspose(1024, 512, 3, 1, 0), _res(512)),  # 3
                nn.Sequential(_up(1024, 512), _res(512), _res(512)),  # 6
                nn.Sequential(_up(768, 384), _res(384), _res(384)),  # 12
                nn.Sequential(_up(512, 256), _res(256), _res(256)),  # 24
                nn.Sequential(_up(320, 128), _res(128), _res(128)),  # 48
                nn.Sequential(_up(160, 64), _res(64), _res(64)),  # 96
            ]
        )
        self.output_block = nn.Sequential(
            Conv2d(80, 32, 3, 1, 1), nn.Conv2d(32, 3, 1, 1, 0), nn.Sigmoid()
        )

    def forward(self, audio_sequences: torch.Tensor, face_sequences: torch.Tensor) -> torch.Tensor:
        batch = audio_sequences.size(0)
        sequential = face_sequences.dim() > 4
        if sequential:
            audio_sequences = _fold_time(audio_sequences, 1)
            face_sequences = _fold_time(face_sequences, 2)

        feats = []
        x = face_sequences
        for block in self.face_encoder_blocks:
            x = block(x)
            feats.append(x)

        x = self.audio_encoder(audio_sequences)
        for block, skip in zip(self.face_decoder_blocks, reversed(feats)):
            x = torch.cat((block(x), skip), dim=1)
        x = self.output_block(x)

        if sequential:
            x = torch.stack(torch.split(x, batch, dim=0), dim=2)
        return x


class Wav2LipDiscQual(nn.Module):
    """Visual-quality discriminator used in GAN training; scores the lower half of each face.

    Input (B, 3, T, 96, 96) in [0, 1] (or (B, 3, 96, 96) as one step); output (B·T, 1), the
    probability that a face is real.
    """

    def __init__(self) -> None:
        super().__init__()
        self.face_encoder_blocks = nn.ModuleList(
            [
                nn.Sequential(NonormConv2d(3, 32, 7, 1, 3)),  # 48 x 96
                nn.Sequential(NonormConv2d(32, 64, 5, (1, 2), 2), NonormConv2d(64, 64, 5, 1, 2)),
                nn.Sequential(NonormConv2d(64, 128, 5, 2, 2), NonormConv2d(128, 128, 5, 1, 2)),
                nn.Sequential(NonormConv2d(128, 256, 5, 2, 2), NonormConv2d(256, 256, 5, 1, 2)),
                nn.Sequential(NonormConv2d(256, 512, 3, 2, 1), NonormConv2d(512, 512, 3, 1, 1)),
                nn.Sequential(NonormConv2d(512, 512, 3, 2, 1), NonormConv2d(512, 512, 3, 1, 1)),
                nn.Sequential(NonormConv2d(512, 512, 3, 1, 0), NonormConv2d(512, 512, 1, 1, 0)),
            ]
        )
        self.binary_pred = nn.Sequential(nn.Conv2d(512, 1, 1, 1, 0), nn.Sigmoid())

    def forward(self, face_sequences: torch.Tensor) -> torch.Tensor:
        if face_sequences.dim() > 4:
            face_sequences = _fold_time(face_sequences, 2)
        x = face_sequences[:, :, face_sequences.size(2) // 2 :]
        for block in self.face_encoder_blocks:
            x = block(x)
        return self.binary_pred(x).view(x.size(0), -1)
