"""A ResNet baseline (He et al. 2016) that trains with the same trainer, data and recipes as the ViTs, so
ViT-vs-CNN analyses (Raghu et al. 2021) compare like with like.

Built from torchvision's ``BasicBlock`` / ``Bottleneck``. Two stems, picked by the input size:
    "cifar"    (inputs <= 64 px): one 3x3 conv of stride 1, no max-pool, as He et al. Sec. 4.2 for CIFAR;
    "imagenet" (larger inputs):   the 7x7 conv of stride 2 and a 3x3 max-pool of the ImageNet ResNets.
Sizes (``RESNETS``): resnet20/56 are the paper's CIFAR ResNets (three stages of 16/32/64 channels,
Sec. 4.2); resnet18/34/50 the ImageNet ones (Table 1).

``forward_intermediates`` returns every residual block's output as the ViT's does (``vitlab.model.Intermediates``,
one token per position of the block's feature map), so the analyses (``vitlab.analysis.block_representations``)
read both architectures the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from vitlab.errors import ConfigError
from vitlab.model import Intermediates, layer_indices

# name -> (block, blocks per stage, channels per stage); He et al. 2016 Table 1 and Sec. 4.2.
RESNETS: dict[str, tuple[str, tuple[int, ...], tuple[int, ...]]] = {
    "resnet20": ("basic", (3, 3, 3), (16, 32, 64)),
    "resnet56": ("basic", (9, 9, 9), (16, 32, 64)),
    "resnet18": ("basic", (2, 2, 2, 2), (64, 128, 256, 512)),
    "resnet34": ("basic", (3, 4, 6, 3), (64, 128, 256, 512)),
    "resnet50": ("bottleneck", (3, 4, 6, 3), (64, 128, 256, 512)),
}
SMALL_INPUT = 64  # inputs up to this size get the CIFAR stem


@dataclass(frozen=True)
class ResNetConfig:
    arch: str = "resnet20"  # a key of RESNETS
    num_classes: int = 10
    img_size: tuple[int, int] = (32, 32)  # the training resolution (any size runs; it picks the stem)
    in_chans: int = 3
    stem: str = ""  # "cifar" | "imagenet"; "" = by img_size (SMALL_INPUT)

    def __post_init__(self) -> None:
        if self.arch not in RESNETS:
            raise ConfigError(f"unknown ResNet {self.arch!r}; available: {', '.join(RESNETS)}")
        size = (self.img_size, self.img_size) if isinstance(self.img_size, int) else tuple(self.img_size)
        object.__setattr__(self, "img_size", tuple(int(s) for s in size))
        if not self.stem:
            object.__setattr__(self, "stem", "cifar" if max(self.img_size) <= SMALL_INPUT else "imagenet")
        if self.stem not in ("cifar", "imagenet"):
            raise ConfigError(f"stem={self.stem!r} is not one of 'cifar', 'imagenet'")

    @property
    def depth(self) -> int:
        """Residual blocks in all (the CNN's counterpart of the ViT's depth)."""
        return sum(RESNETS[self.arch][1])

    @property
    def class_token(self) -> bool:
        """A CNN has no class token (read like ``ViTConfig.class_token`` by the analyses)."""
        return False

    def replace(self, **changes: Any) -> ResNetConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "img_size": list(self.img_size)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ResNetConfig:
        return cls(**d)


class ResNet(nn.Module):
    def __init__(self, cfg: ResNetConfig):
        from torchvision.models.resnet import BasicBlock, Bottleneck  # here: `import vitlab` stays free of torchvision

        super().__init__()
        self.config = cfg
        kind, blocks, widths = RESNETS[cfg.arch]
        block = BasicBlock if kind == "basic" else Bottleneck
        c = widths[0]
        if cfg.stem == "cifar":
            self.stem = nn.Sequential(nn.Conv2d(cfg.in_chans, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                                      nn.ReLU(inplace=True))
        else:
            self.stem = nn.Sequential(nn.Conv2d(cfg.in_chans, c, 7, stride=2, padding=3, bias=False),
                                      nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1))
        stages, c_in = [], c
        for i, (n, width) in enumerate(zip(blocks, widths, strict=True)):
            layers = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                c_out = width * block.expansion
                down = None
                if stride != 1 or c_in != c_out:  # projection shortcut (option B of He et al.)
                    down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
                layers.append(block(c_in, width, stride=stride, downsample=down))
                c_in = c_out
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.num_features = c_in
        self.head = nn.Linear(c_in, cfg.num_classes) if cfg.num_classes else nn.Identity()
        self.preprocessing = None  # vitlab.Preprocessing, set by vitlab.load and the trainer
        self.class_names: list[str] | None = None
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Convs: Kaiming normal (fan_out, ReLU); BatchNorm: weight 1, bias 0, except the last BatchNorm of each
        block, 0, so every block starts as the identity (Goyal et al. 2017); head: PyTorch's default."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for stage in self.stages:
            for blk in stage:
                nn.init.zeros_(getattr(blk, "bn3", blk.bn2).weight)  # Bottleneck: bn3; BasicBlock: bn2

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.config.in_chans:
            raise ConfigError(f"expected images of shape (B, {self.config.in_chans}, H, W), got {tuple(x.shape)}")

    def forward_intermediates(self, x: torch.Tensor, layers: int | Sequence[int] | None = None,
                              return_attention: bool = False) -> Intermediates:
        """Run the model and keep the output of the requested residual blocks, as ``VisionTransformer`` does.

        layers: None = every block; an int n = the last n; a sequence = those indices (negative from the end).
        ``tokens[l]`` is block l's feature map (B, C_l, h_l, w_l) as (B, h_l*w_l, C_l); ``features`` the last
        feature map (B, C, h, w) that ``forward_head`` reads; no attention (``return_attention`` is an error).
        """
        if return_attention:
            raise ConfigError("a ResNet has no attention to return; attention analyses are for ViTs")
        self._check_input(x)
        keep = layer_indices(layers, self.config.depth)
        tokens = {}
        x = self.stem(x)
        blocks = [blk for stage in self.stages for blk in stage]
        for i, blk in enumerate(blocks):
            x = blk(x)  # (B, C_l, h_l, w_l)
            if i in keep:
                tokens[i] = x.flatten(2).transpose(1, 2)  # (B, h_l*w_l, C_l)
        return Intermediates(tokens, {}, x, tuple(x.shape[-2:]), num_prefix_tokens=0)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> the last stage's feature map (B, C', h, w)."""
        self._check_input(x)
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(2, 3))  # global average pool: (B, C, h, w) -> (B, C)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        self.config = self.config.replace(num_classes=num_classes)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()


def create_resnet(name: str, **overrides: Any) -> ResNet:
    """A ResNet baseline by name (``RESNETS``), e.g. ``create_resnet("resnet20", num_classes=10)``."""
    if name not in RESNETS:
        raise ConfigError(f"unknown ResNet {name!r}; available: {', '.join(RESNETS)}")
    return ResNet(ResNetConfig(arch=name, **overrides))
