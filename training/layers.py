"""Building blocks of the IBN-Net-A ResNet (Pan et al., ECCV 2018), kept apart from the model."""
from __future__ import annotations

import torch
from torch import nn


class IBN(nn.Module):
    """Instance-Batch Normalization: InstanceNorm on the first half of the channels, BatchNorm on the rest."""

    def __init__(self, planes: int, ratio: float = 0.5) -> None:
        super().__init__()
        self.half = int(planes * ratio)
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(planes - self.half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Constant slice bounds (not x.shape arithmetic) export as constant Slices, which the INT8 placement
        # needs to fold the BN half into the conv even when the graph is not simplified.
        a, b = x[:, :self.half], x[:, self.half:]
        return torch.cat((self.IN(a.contiguous()), self.BN(b.contiguous())), dim=1)


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding, no bias (a BatchNorm follows)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlockIBN(nn.Module):
    """ResNet basic block; with `ibn=True` its first norm is IBN (IBN-Net-A), else BatchNorm."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 ibn: bool = False) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = IBN(planes) if ibn else nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ConvBNReLU(nn.Sequential):
    """conv-BN-ReLU block (the gender branch's own block on top of layer3)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )


class ResNetIBNa(nn.Module):
    """IBN-Net-A ResNet backbone: IBN in the first norm of every block in layer1-3, plain BN in layer4.

    Parameter names follow torchvision / the IBN-Net release (conv1, bn1, layer1.0.bn1.IN, ...), so their
    state dicts load with `load_backbone_weights`.
    """

    feature_channels = (256, 512)  # (layer3, layer4) channels: what the heads read

    def __init__(self, layers: tuple = (2, 2, 2, 2), ibn_stages: tuple = (True, True, True, False),
                 last_stride: int = 2) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0], 1, ibn_stages[0])
        self.layer2 = self._make_layer(128, layers[1], 2, ibn_stages[1])
        self.layer3 = self._make_layer(256, layers[2], 2, ibn_stages[2])
        # last_stride=2 (ResNet default, 8x4 map) by default: layer4 costs 4x less than with the re-ID trick
        # last_stride=1 (16x8 map, BoT/fast-reid), which buys about a point of rank-1 for 1.7x the FLOPs.
        self.layer4 = self._make_layer(512, layers[3], last_stride, ibn_stages[3])
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, planes: int, blocks: int, stride: int, ibn: bool) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        layers = [BasicBlockIBN(self.inplanes, planes, stride, downsample, ibn)]
        self.inplanes = planes
        layers += [BasicBlockIBN(planes, planes, ibn=ibn) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """conv1-bn1-relu-maxpool."""
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward(self, x: torch.Tensor) -> tuple:
        """Returns (layer3 map, layer4 map): the two heads' inputs."""
        x3 = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return x3, self.layer4(x3)
