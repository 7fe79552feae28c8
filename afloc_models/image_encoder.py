"""ResNet image encoder with AFLoc's three feature levels.

The backbone is :mod:`afloc_models.resnet` (PyTorch alone), whose parameter names match
torchvision's and MONAI's, so the published torchvision-style checkpoint and checkpoints written
with the earlier MONAI backbone load without renaming. Three heads project to the joint width D:

- ``local2_embedder``: 1x1 conv on stage 2 (``layer2``): shallow local features, matched to words.
- ``local_embedder``: 1x1 conv on stage 3 (``layer3``): deep local features, matched to sentences
  (on stage 2 with ``local_stage: 2``: a smaller receptive field, output stride 8).
- ``global_embedder``: linear on pooled stage 4 (``layer4``): global feature, matched to the report.

With ``working_size`` set (299 for published checkpoints) the normalised input is first resized
to that square (bilinear, ``align_corners=True``), as the published encoder does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from afloc_models.config import ImageEncoderConfig
from afloc_models.errors import ConfigError
from afloc_models.resnet import resnet18, resnet50

#: Output channels of (stage 2, stage 3, stage 4) per architecture at the published base width 64.
STAGE_CHANNELS = {"resnet18": (128, 256, 512), "resnet50": (512, 1024, 2048)}
PUBLISHED_BASE_WIDTH = 64


@dataclass
class ImageFeatures:
    """Image features at AFLoc's three levels, all of width D.

    Attributes:
        shallow: stage-2 local features ``[B, D, H/8, W/8]``.
        deep: stage-3 local features ``[B, D, H/16, W/16]`` (``H/8`` with ``deep_stride`` 8 or
            ``local_stage`` 2, where they are projected from stage 2).
        global_: pooled stage-4 feature ``[B, D]``.
    """

    shallow: torch.Tensor
    deep: torch.Tensor
    global_: torch.Tensor


class ImageEncoder(nn.Module):
    """ResNet-18/50 returning :class:`ImageFeatures`; accepts 1- or 3-channel input."""

    def __init__(self, config: ImageEncoderConfig, embed_dim: int):
        super().__init__()
        builders = {"resnet18": resnet18, "resnet50": resnet50}
        if config.arch not in builders:
            raise ConfigError(f"unknown image encoder '{config.arch}' (known: {', '.join(builders)})")
        if config.in_channels not in (1, 3):
            raise ConfigError(f"image.in_channels must be 1 or 3, got {config.in_channels}")
        if config.deep_stride not in (8, 16):
            raise ConfigError(f"image.deep_stride must be 8 or 16, got {config.deep_stride}")
        if not 8 <= config.base_width <= 256:
            raise ConfigError(f"image.base_width must be between 8 and 256, got {config.base_width}")
        if config.local_stage not in (2, 3):
            raise ConfigError(f"image.local_stage must be 2 or 3, got {config.local_stage}")
        self.local_stage = config.local_stage
        self.in_channels = config.in_channels
        self.working_size = int(config.working_size)
        self.backbone = builders[config.arch](
            in_channels=config.in_channels, base_width=config.base_width, zero_init_residual=config.zero_init_residual
        )
        if config.deep_stride == 8:
            _dilate_stage(self.backbone.layer3)
        if config.padding not in PADDINGS:
            raise ConfigError(f"image.padding must be one of {', '.join(PADDINGS)}, got {config.padding!r}")
        if config.padding != "zeros":
            _pad_edges(self.backbone, config.padding)
        shallow_ch, deep_ch, global_ch = (
            c * config.base_width // PUBLISHED_BASE_WIDTH for c in STAGE_CHANNELS[config.arch]
        )
        self.local2_embedder = nn.Conv2d(shallow_ch, embed_dim, kernel_size=1, bias=False)
        local_ch = deep_ch if config.local_stage == 3 else shallow_ch
        self.local_embedder = nn.Conv2d(local_ch, embed_dim, kernel_size=1, bias=False)
        self.global_embedder = nn.Linear(global_ch, embed_dim)
        if config.sink_cells < 0:
            raise ConfigError(f"image.sink_cells must be >= 0 (0: none), got {config.sink_cells}")
        if config.sink_cells:
            #: ``[D, K]`` learned cells the sentence attention may use besides the image's own.
            self.sink = nn.Parameter(torch.randn(embed_dim, config.sink_cells) * embed_dim**-0.5)
        else:
            self.register_parameter("sink", None)

    def forward(self, images: torch.Tensor) -> ImageFeatures:
        """Encode normalised images ``[B, C, H, W]`` (C = 1 or 3) into :class:`ImageFeatures`."""
        images = self._match_channels(images)
        if self.working_size and images.shape[-2:] != (self.working_size, self.working_size):
            size = (self.working_size, self.working_size)
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=True)
        net = self.backbone
        x = net.layer1(net.stem(images))
        stage2 = net.layer2(x)
        stage3 = net.layer3(stage2)
        stage4 = net.layer4(stage3)
        pooled = torch.flatten(net.avgpool(stage4), 1)
        return ImageFeatures(
            shallow=self.local2_embedder(stage2),
            deep=self.local_embedder(stage3 if self.local_stage == 3 else stage2),
            global_=self.global_embedder(pooled),
        )

    def _match_channels(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4:
            raise ValueError(f"expected images [B, C, H, W], got shape {tuple(images.shape)}")
        channels = images.shape[1]
        if channels == self.in_channels:
            return images
        if channels == 1 and self.in_channels == 3:
            return images.expand(-1, 3, -1, -1)
        if channels == 3 and self.in_channels == 1:
            # A grayscale model given colour input: luminance, the way a viewer would show it.
            weights = images.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            return (images * weights).sum(dim=1, keepdim=True)
        raise ValueError(f"images have {channels} channels; the encoder takes 1 or 3")


#: Values of ``image.padding``.
PADDINGS = ("zeros", "replicate")


def _pad_edges(backbone: nn.Module, mode: str) -> None:
    """Every padded convolution of ``backbone`` pads with ``mode`` instead of zeros (after any
    dilation has set its final padding). Weights keep their shapes and names."""
    for module in backbone.modules():
        if isinstance(module, nn.Conv2d) and any(p > 0 for p in module.padding):
            module.padding_mode = mode
            # nn.Conv2d pads non-zero modes with this list, computed once at construction.
            module._reversed_padding_repeated_twice = [p for p in reversed(module.padding) for _ in range(2)]


def _dilate_stage(stage: nn.Sequential) -> None:
    """Trade a stage's stride 2 for dilation 2 (output stride halved, receptive field kept).

    The convolutions that were strided still see undilated input; every later 3x3 convolution
    samples every other pixel, as the stride would have made it. Only strides, dilations and
    paddings change, so weights keep their shapes and names.
    """
    for module in stage.modules():
        if not isinstance(module, nn.Conv2d):
            continue
        if module.stride == (2, 2):
            module.stride = (1, 1)
        elif module.kernel_size == (3, 3):
            module.dilation, module.padding = (2, 2), (2, 2)
