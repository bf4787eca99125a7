"""Convolution blocks shared by Wav2Lip and its discriminator.

Each block keeps its layers in a ``conv_block`` Sequential so that the state-dict keys
(``<path>.conv_block.0.weight``, ``<path>.conv_block.1.running_mean``, ...) match the released
checkpoints without any renaming.
"""

from __future__ import annotations

import torch
from torch import nn

IntPair = int | tuple[int, int]


class Conv2d(nn.Module):
    """Conv → BatchNorm → (+ input if residual) → ReLU.

    The residual is added before the activation, as in the original; moving it after the ReLU
    would change every output.
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: IntPair = 0,
        residual: bool = False,
    ) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.Conv2d(cin, cout, kernel_size, stride, padding), nn.BatchNorm2d(cout)
        )
        self.act = nn.ReLU()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        if self.residual:
            out = out + x
        return self.act(out)


class Conv2dTranspose(nn.Module):
    """ConvTranspose → BatchNorm → ReLU: the decoder's upsampling step."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: IntPair = 0,
        output_padding: IntPair = 0,
    ) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, kernel_size, stride, padding, output_padding),
            nn.BatchNorm2d(cout),
        )
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv_block(x))


class NonormConv2d(nn.Module):
    """Conv → LeakyReLU(0.01) without normalisation, used by the quality discriminator."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: IntPair = 0,
    ) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel_size, stride, padding))
        self.act = nn.LeakyReLU(0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv_block(x))
