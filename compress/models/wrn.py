"""Wide ResNets for CIFAR (WRN-d-k), the reference KD pair WRN-40-2 → WRN-16-2; timm has only ImageNet WRNs.

Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016. Pre-activation basic blocks, three
groups of (d − 4) / 6 blocks with 16k, 32k, 64k channels, global average pool, linear head.
Parameter names follow the CRD code (github.com/HobbitLong/RepDistiller, `models/wrn.py`:
`conv1`, `block1.layer.0.bn1`, ..., `bn1`, `fc`), so its published teacher checkpoints
(`{"model": state_dict}`) load as `teacher.checkpoint`. WRN-40-2: 2.2 M params, WRN-16-2: 0.70 M.
"""

from __future__ import annotations

import torch
from torch import nn

from compress.core.errors import KdtoolError
from compress.models.registry import LOCAL_MODELS


class _Block(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3-BN-ReLU-conv3x3; 1x1 conv shortcut on a shape change."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.relu1 = nn.BatchNorm2d(cin), nn.ReLU()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.relu2 = nn.BatchNorm2d(cout), nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        same = cin == cout and stride == 1
        self.convShortcut = None if same else nn.Conv2d(cin, cout, 1, stride, bias=False)  # noqa: N815

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(a))))
        return out + (x if self.convShortcut is None else self.convShortcut(a))


class _Group(nn.Module):
    def __init__(self, n: int, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        blocks = [_Block(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(n)]
        self.layer = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-widen for small images: (N, C, H, W) → (N, num_outputs)."""

    def __init__(self, depth: int, widen: int, num_outputs: int, in_chans: int = 3) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise KdtoolError(f"wide resnet depth {depth} is not 6n+4", "use 16, 22, 28, 40, ...")
        n, ch = (depth - 4) // 6, [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_chans, ch[0], 3, 1, 1, bias=False)
        self.block1, self.block2, self.block3 = (_Group(n, ch[0], ch[1], 1), _Group(n, ch[1], ch[2], 2),
                                                 _Group(n, ch[2], ch[3], 2))
        self.bn1, self.relu = nn.BatchNorm2d(ch[3]), nn.ReLU()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(ch[3], num_outputs)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))  # (N, 64k, H/4, W/4)
        return self.fc(self.pool(self.relu(self.bn1(x))))


@LOCAL_MODELS.register("wrn40_2")
def wrn40_2(num_outputs: int, in_chans: int = 3) -> nn.Module:
    """WRN-40-2 for CIFAR (2.2 M params): the CRD paper's teacher."""
    return WideResNet(40, 2, num_outputs, in_chans)


@LOCAL_MODELS.register("wrn16_2")
def wrn16_2(num_outputs: int, in_chans: int = 3) -> nn.Module:
    """WRN-16-2 for CIFAR (0.70 M params): the CRD paper's student."""
    return WideResNet(16, 2, num_outputs, in_chans)
