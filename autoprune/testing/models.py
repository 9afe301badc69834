"""Small reference models: one per architecture family that pruning tools tend to break on.

They are used by the tests and the benchmarks (``from autoprune.testing import models``), and
they make good starting points for trying autoprune on something bigger than ``digits``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = [
    "MobileNetV2Like",
    "PlainCNN",
    "ResNetLike",
    "TinyTransformer",
    "get",
    "get_model",
    "model_names",
    "names",
    "register_model",
]


def _conv_bn_relu(c_in: int, c_out: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, 1, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class PlainCNN(nn.Module):
    """A VGG-style Conv-BN-ReLU stack followed by a two-layer classifier."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 64) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _conv_bn_relu(in_channels, w),
            _conv_bn_relu(w, w),
            nn.MaxPool2d(2),
            _conv_bn_relu(w, 2 * w),
            _conv_bn_relu(2 * w, 2 * w),
            nn.MaxPool2d(2),
            _conv_bn_relu(2 * w, 4 * w),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(4 * w, 2 * w), nn.ReLU(inplace=True), nn.Linear(2 * w, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNetLike(nn.Module):
    """A small ResNet: residual additions couple channels across blocks."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 64) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(in_channels, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.layer1 = nn.Sequential(_BasicBlock(w, w, 1), _BasicBlock(w, w, 1))
        self.layer2 = nn.Sequential(_BasicBlock(w, 2 * w, 2), _BasicBlock(2 * w, 2 * w, 1))
        self.layer3 = nn.Sequential(_BasicBlock(2 * w, 4 * w, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class _InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        self.use_res = stride == 1 and c_in == c_out
        self.block = nn.Sequential(
            nn.Conv2d(c_in, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),  # depthwise
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_res else out


class MobileNetV2Like(nn.Module):
    """MobileNetV2-style net: inverted residuals with depthwise convolutions."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(in_channels, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU6())
        self.blocks = nn.Sequential(
            _InvertedResidual(w, w, 1, 4),
            _InvertedResidual(w, 2 * w, 2, 4),
            _InvertedResidual(2 * w, 2 * w, 1, 4),
            _InvertedResidual(2 * w, 4 * w, 2, 4),
        )
        self.head = nn.Sequential(nn.Conv2d(4 * w, 8 * w, 1, bias=False), nn.BatchNorm2d(8 * w), nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(8 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))


class _EncoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class TinyTransformer(nn.Module):
    """A ViT-style encoder over a sequence of token features, with nn.MultiheadAttention."""

    def __init__(
        self, in_features: int = 32, num_classes: int = 10, dim: int = 128, heads: int = 4, depth: int = 2
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(in_features, dim)
        self.blocks = nn.Sequential(*[_EncoderBlock(dim, heads, 4) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.blocks(self.embed(x)))
        return self.head(x.mean(dim=1))


_REGISTRY: dict[str, tuple[type[nn.Module], tuple[int, ...]]] = {
    "cnn": (PlainCNN, (3, 32, 32)),
    "resnet": (ResNetLike, (3, 32, 32)),
    "mobilenetv2": (MobileNetV2Like, (3, 32, 32)),
    "transformer": (TinyTransformer, (16, 32)),
}


def register_model(name: str, input_shape: tuple[int, ...]) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Decorator: register a reference model class (built without arguments) under ``name``,
    with the shape of one example input (without the batch dimension)."""

    def deco(cls: type[nn.Module]) -> type[nn.Module]:
        _REGISTRY[name] = (cls, input_shape)
        return cls

    return deco


def model_names() -> list[str]:
    """Names of the reference models, for :func:`get_model`."""
    return list(_REGISTRY)


def get_model(name: str, *, batch_size: int = 1, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """Build a reference model (in eval mode) and a random example input batch for it."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown reference model {name!r}; choose from {', '.join(_REGISTRY)}")
    cls, shape = _REGISTRY[name]
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(seed)
        model = cls().eval()
    return model, torch.randn(batch_size, *shape, generator=gen)


# The names of earlier versions: the same functions.
get = get_model
names = model_names
