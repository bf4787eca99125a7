"""S3FD face detector network (raw head outputs; decoding and NMS live in the detection stage)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class L2Norm(nn.Module):
    """Per-position channel L2 normalisation with a learned per-channel scale.

    Written with pow/sum/sqrt/add/div so exporters emit plain ops that a TensorRT build can keep
    in FP32; the sum of squares overflows FP16 on real activations.
    """

    def __init__(self, channels: int, scale: float = 1.0, eps: float = 1e-10) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = x.pow(2).sum(dim=1, keepdim=True).sqrt() + self.eps
        return x / norm * self.weight.view(1, -1, 1, 1)


def _conv3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, 1, 1)


class S3FD(nn.Module):
    """VGG16-based single-shot detector with six prediction levels (strides 4 … 128).

    Input (B, 3, H, W) float: RGB at full frame resolution minus (104, 117, 123), unscaled.
    Output: ``[cls1, reg1, ..., cls6, reg6]``; cls (B, 2, h, w) background/face logits, reg
    (B, 4, h, w) box offsets (dx, dy, dw, dh). Level 1's four conf channels are reduced to two by
    max-out over the three background channels, as the released model was trained with.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1_1 = _conv3(3, 64)
        self.conv1_2 = _conv3(64, 64)
        self.conv2_1 = _conv3(64, 128)
        self.conv2_2 = _conv3(128, 128)
        self.conv3_1 = _conv3(128, 256)
        self.conv3_2 = _conv3(256, 256)
        self.conv3_3 = _conv3(256, 256)
        self.conv4_1 = _conv3(256, 512)
        self.conv4_2 = _conv3(512, 512)
        self.conv4_3 = _conv3(512, 512)
        self.conv5_1 = _conv3(512, 512)
        self.conv5_2 = _conv3(512, 512)
        self.conv5_3 = _conv3(512, 512)

        # padding 3 without dilation grows the map by 4 in each dimension, as the released model does
        self.fc6 = nn.Conv2d(512, 1024, 3, 1, 3)
        self.fc7 = nn.Conv2d(1024, 1024, 1, 1, 0)
        self.conv6_1 = nn.Conv2d(1024, 256, 1, 1, 0)
        self.conv6_2 = nn.Conv2d(256, 512, 3, 2, 1)
        self.conv7_1 = nn.Conv2d(512, 128, 1, 1, 0)
        self.conv7_2 = nn.Conv2d(128, 256, 3, 2, 1)

        self.conv3_3_norm = L2Norm(256, scale=10)
        self.conv4_3_norm = L2Norm(512, scale=8)
        self.conv5_3_norm = L2Norm(512, scale=5)

        self.conv3_3_norm_mbox_conf = _conv3(256, 4)
        self.conv3_3_norm_mbox_loc = _conv3(256, 4)
        self.conv4_3_norm_mbox_conf = _conv3(512, 2)
        self.conv4_3_norm_mbox_loc = _conv3(512, 4)
        self.conv5_3_norm_mbox_conf = _conv3(512, 2)
        self.conv5_3_norm_mbox_loc = _conv3(512, 4)
        self.fc7_mbox_conf = _conv3(1024, 2)
        self.fc7_mbox_loc = _conv3(1024, 4)
        self.conv6_2_mbox_conf = _conv3(512, 2)
        self.conv6_2_mbox_loc = _conv3(512, 4)
        self.conv7_2_mbox_conf = _conv3(256, 2)
        self.conv7_2_mbox_loc = _conv3(256, 4)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = F.relu(self.conv1_1(x))
        h = F.relu(self.conv1_2(h))
        h = F.max_pool2d(h, 2, 2)
        h = F.relu(self.conv2_1(h))
        h = F.relu(self.conv2_2(h))
        h = F.max_pool2d(h, 2, 2)
        h = F.relu(self.conv3_1(h))
        h = F.relu(self.conv3_2(h))
        f3_3 = h = F.relu(self.conv3_3(h))
        h = F.max_pool2d(h, 2, 2)
        h = F.relu(self.conv4_1(h))
        h = F.relu(self.conv4_2(h))
        f4_3 = h = F.relu(self.conv4_3(h))
        h = F.max_pool2d(h, 2, 2)
        h = F.relu(self.conv5_1(h))
        h = F.relu(self.conv5_2(h))
        f5_3 = h = F.relu(self.conv5_3(h))
        h = F.max_pool2d(h, 2, 2)

        h = F.relu(self.fc6(h))
        ffc7 = h = F.relu(self.fc7(h))
        h = F.relu(self.conv6_1(h))
        f6_2 = h = F.relu(self.conv6_2(h))
        h = F.relu(self.conv7_1(h))
        f7_2 = F.relu(self.conv7_2(h))

        f3_3 = self.conv3_3_norm(f3_3)
        f4_3 = self.conv4_3_norm(f4_3)
        f5_3 = self.conv5_3_norm(f5_3)

        c0, c1, c2, c3 = torch.chunk(self.conv3_3_norm_mbox_conf(f3_3), 4, dim=1)
        cls1 = torch.cat([torch.max(torch.max(c0, c1), c2), c3], dim=1)
        return [
            cls1,
            self.conv3_3_norm_mbox_loc(f3_3),
            self.conv4_3_norm_mbox_conf(f4_3),
            self.conv4_3_norm_mbox_loc(f4_3),
            self.conv5_3_norm_mbox_conf(f5_3),
            self.conv5_3_norm_mbox_loc(f5_3),
            self.fc7_mbox_conf(ffc7),
            self.fc7_mbox_loc(ffc7),
            self.conv6_2_mbox_conf(f6_2),
            self.conv6_2_mbox_loc(f6_2),
            self.conv7_2_mbox_conf(f7_2),
            self.conv7_2_mbox_loc(f7_2),
        ]


def head_map_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """(H, W) of the six head outputs for an input frame, without running the network.

    Three 2x2 floor pools give strides 4, 8, 16; fc6 (k3, p3, no dilation) grows the pool5 map
    by 4, then two stride-2 convs; e.g. 240x320 -> 60x80, 30x40, 15x20, 11x14, 6x7, 3x4.
    """
    h, w = height // 4, width // 4
    sizes = [(h, w), (h // 2, w // 2), (h // 4, w // 4)]
    h, w = h // 8 + 4, w // 8 + 4
    sizes.append((h, w))
    for _ in range(2):
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        sizes.append((h, w))
    return sizes
