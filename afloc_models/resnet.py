"""A plain 2D ResNet-18/50 in PyTorch alone, with torchvision's parameter names.

Only the layers AFLoc uses are built (stem, four stages, global average pool; no classifier),
so torchvision, MONAI and the published checkpoint's backbone keys (``conv1.weight``,
``layer3.0.downsample.0.weight``, ...) load without renaming. The stride of a bottleneck stage
sits on its 3x3 convolution ("ResNet v1.5"), as in torchvision and MONAI.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet50"]


def _conv3x3(inp: int, out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(inp, out, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(inp: int, out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(inp, out, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, inp: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None):
        super().__init__()
        self.conv1 = _conv3x3(inp, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        """The batch norm just before the residual sum."""
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand, with a residual connection (ResNet-50)."""

    expansion = 4

    def __init__(self, inp: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None):
        super().__init__()
        self.conv1 = _conv1x1(inp, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        """The batch norm just before the residual sum."""
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


class ResNet(nn.Module):
    """Stem (7x7 stride-2 conv, BN, ReLU, 3x3 stride-2 max pool), four stages, average pool.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: blocks per stage.
        in_channels: channels of the input image.
        base_width: planes of the stem and the first stage (64 as published); stages 2-4 double
            it each time, so 32 gives a network of a quarter of the compute.
        zero_init_residual: start each block's last batch-norm scale at 0 so every block begins
            as the identity. It draws no random numbers, so the other weights are the same
            either way for one seed.
    """

    def __init__(
        self,
        block: type[Union[BasicBlock, Bottleneck]],
        layers: tuple[int, int, int, int],
        in_channels: int = 3,
        base_width: int = 64,
        zero_init_residual: bool = False,
    ):
        super().__init__()
        w = int(base_width)
        self._inp = w
        self.conv1 = nn.Conv2d(in_channels, w, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._stage(block, w, layers[0], stride=1)
        self.layer2 = self._stage(block, 2 * w, layers[1], stride=2)
        self.layer3 = self._stage(block, 4 * w, layers[2], stride=2)
        self.layer4 = self._stage(block, 8 * w, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(module.last_bn.weight)

    def _stage(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._inp != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self._inp, planes * block.expansion, stride), nn.BatchNorm2d(planes * block.expansion)
            )
        stage = [block(self._inp, planes, stride, downsample)]
        self._inp = planes * block.expansion
        stage.extend(block(self._inp, planes) for _ in range(1, blocks))
        return nn.Sequential(*stage)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> stage-1 input ``[B, base_width, H/4, W/4]``."""
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))


def resnet18(in_channels: int = 3, base_width: int = 64, zero_init_residual: bool = False) -> ResNet:
    """ResNet-18: basic blocks, (2, 2, 2, 2) per stage, ``8 * base_width`` (512) output channels."""
    return ResNet(BasicBlock, (2, 2, 2, 2), in_channels, base_width, zero_init_residual)


def resnet50(in_channels: int = 3, base_width: int = 64, zero_init_residual: bool = False) -> ResNet:
    """ResNet-50: bottleneck blocks, (3, 4, 6, 3) per stage, ``32 * base_width`` (2048) output channels."""
    return ResNet(Bottleneck, (3, 4, 6, 3), in_channels, base_width, zero_init_residual)
