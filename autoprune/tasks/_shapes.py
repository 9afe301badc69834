"""The built-in ``shapes-resnet`` task: a small residual CNN on procedurally drawn shapes.

Harder than ``digits`` on purpose, so that pruning choices show in accuracy. The images are
drawn offline by a fixed-seed generator (nothing is downloaded): 1x24x24 grey images of one
of ten shapes (disk, ring, square, frame, triangle, hollow triangle, plus, ellipse,
half-disk, star) at a random position, size, rotation and contrast, on a background
gradient, with up to two distractor strokes and Gaussian pixel noise. Small shapes make
disk/square, ring/frame and ellipse/half-disk hard to tell apart, which is what limits the
accuracy. The model has a stem and three stages of residual blocks (residual additions, so
a search meets coupled channel groups, as in real networks).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from autoprune.tasks._base import Task
from autoprune.tasks._builtin import Splits, cached_data, cached_path, tensor_task

__all__ = ["CLASSES", "ShapesResNet", "draw_shapes", "shapes_splits", "make_shapes_resnet", "STANDARD_FINE_TUNE_STEPS"]

CLASSES = (
    "disk",
    "ring",
    "square",
    "frame",
    "triangle",
    "hollow-triangle",
    "plus",
    "ellipse",
    "half-disk",
    "star",
)
SIZE = 24
SPLIT_SIZES = {"train": 20_000, "val": 2_000, "test": 3_000}
NOISE = 0.12
SCALE = (0.42, 0.65)  # shape radius as a fraction of half the image
STANDARD_FINE_TUNE_STEPS = 100  # the largest of the search's default fine-tune budgets
_TRAIN_STEPS = 900
_BATCH = 64


def _polygon(a: np.ndarray, n: int) -> np.ndarray:
    """Distance from the centre to the edge of a regular n-gon (circumradius 1) at angle ``a``."""
    k = np.pi / n
    return np.cos(k) / np.cos((a % (2 * k)) - k)


def _field(label: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed inside-ness of shape ``label`` in shape coordinates (> 0 inside, in shape radii)."""
    r, a = np.hypot(u, v), np.arctan2(v, u)
    box = np.maximum(np.abs(u), np.abs(v))
    fields = {
        0: lambda: 1 - r,
        1: lambda: 0.22 - np.abs(r - 0.75),
        2: lambda: 0.8 - box,
        3: lambda: 0.17 - np.abs(box - 0.68),
        4: lambda: _polygon(a, 3) - r,
        5: lambda: 0.2 - np.abs(r - 0.8 * _polygon(a, 3)),
        6: lambda: np.maximum(
            np.minimum(0.28 - np.abs(u), 0.95 - np.abs(v)), np.minimum(0.28 - np.abs(v), 0.95 - np.abs(u))
        ),
        7: lambda: 1 - np.hypot(u, v / 0.5),
        8: lambda: np.minimum(1 - np.hypot(u, v + 0.45), v + 0.45),
        9: lambda: 0.62 + 0.38 * np.cos(5 * a) - r,
    }
    return fields[label]()


def draw_shapes(
    n: int, seed: int, *, noise: float = NOISE, scale: tuple[float, float] = SCALE
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images (``n x 1 x 24 x 24`` floats) and their labels, the same for the same seed."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASSES), n)
    size = rng.uniform(*scale, n)[:, None, None]
    turn = rng.uniform(0, 2 * np.pi, n)[:, None, None]
    centre = rng.uniform(-1, 1, (n, 2)) * (1 - size[:, :, 0])
    contrast = rng.uniform(0.4, 1.0, n)[:, None, None]
    tilt = rng.uniform(-0.3, 0.3, (n, 1, 1, 1)) * rng.normal(size=(n, 2, 1, 1))
    grid = (np.arange(SIZE) + 0.5) / SIZE * 2 - 1
    gx, gy = np.meshgrid(grid, grid, indexing="xy")
    dx, dy = gx - centre[:, 0, None, None], gy - centre[:, 1, None, None]
    u = (np.cos(turn) * dx + np.sin(turn) * dy) / size
    v = (-np.sin(turn) * dx + np.cos(turn) * dy) / size
    inside = np.empty((n, SIZE, SIZE))
    for label in range(len(CLASSES)):
        rows = labels == label
        inside[rows] = _field(label, u[rows], v[rows])
    pixels = inside * size * SIZE / 2  # signed distance in pixels: a soft, anti-aliased edge
    images = contrast / (1 + np.exp(-2 * pixels)) + tilt[:, 0] * gx + tilt[:, 1] * gy
    for _ in range(2):  # distractor strokes: short blurred line segments, present or not
        present = rng.random(n) < 0.5
        px, py = (rng.uniform(-1, 1, (n, 1, 1)) for _ in range(2))
        angle = rng.uniform(0, np.pi, (n, 1, 1))
        half = rng.uniform(0.1, 0.45, (n, 1, 1))
        along = np.cos(angle) * (gx - px) + np.sin(angle) * (gy - py)
        across = -np.sin(angle) * (gx - px) + np.cos(angle) * (gy - py)
        dist2 = np.maximum(np.abs(along) - half, 0) ** 2 + across**2
        images += present[:, None, None] * rng.uniform(0.2, 0.7, (n, 1, 1)) * np.exp(-dist2 / (2 * 0.05**2))
    images += rng.normal(0, noise, images.shape)
    return torch.from_numpy(images.astype(np.float32)).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def shapes_splits(split_seed: int = 0) -> Splits:
    """Train/validation/test images: each split drawn by its own generator stream of
    ``split_seed`` (once; then read from the cache, about 60 MB)."""
    key = {"split_seed": split_seed, "data": [SPLIT_SIZES, NOISE, SCALE, SIZE], "v": 1}
    return cached_data(f"shapes-data-split{split_seed}", key, lambda: _draw_splits(split_seed))  # type: ignore[no-any-return]


def _draw_splits(split_seed: int) -> Splits:
    streams = np.random.SeedSequence(split_seed).spawn(len(SPLIT_SIZES))
    return {
        name: draw_shapes(count, int(stream.generate_state(1)[0]), noise=NOISE, scale=SCALE)
        for (name, count), stream in zip(SPLIT_SIZES.items(), streams, strict=True)
    }


class _Block(nn.Module):
    """A ResNet basic block: two 3x3 conv-BN, plus the input (1x1 conv-BN when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.shortcut(x))


class ShapesResNet(nn.Module):
    """Stem (conv-BN-ReLU-maxpool) and three stages of residual blocks (widths w, 2w, 4w)."""

    def __init__(self, width: int = 16, blocks: int = 1, num_classes: int = len(CLASSES)) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2)
        )
        stages, cin = [], width
        for i, cout in enumerate((width, 2 * width, 4 * width)):
            stage = [_Block(cin if b == 0 else cout, cout, 2 if b == 0 and i > 0 else 1) for b in range(blocks)]
            stages.append(nn.Sequential(*stage))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.adaptive_avg_pool2d(self.stages(self.stem(x)), 1).flatten(1))


def _one_cycle(opt: torch.optim.Optimizer, steps: int) -> Any:
    lr = opt.param_groups[0]["lr"]
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)


def make_shapes_resnet(
    seed: int = 0, width: int = 16, blocks: int = 1, batch_size: int = 64, fine_tune_seed: int | None = None
) -> Task:
    """Build the ``shapes-resnet`` task.

    ``evaluate`` scores the validation split (2000 images), ``test`` the test split (3000);
    both are drawn by the fixed split seed, whatever ``seed``. The model trains on 20000
    images for 900 steps of 64 (AdamW, one-cycle learning rate) on first use and is cached.
    Fine-tuning: AdamW, learning rate 1e-3 decayed to 0 by a cosine over each call (at a
    constant 1e-3, 100 steps took the unpruned width-32 model from 95.97% to 87.5% test
    accuracy), batches of 64; the standard budget is
    ``STANDARD_FINE_TUNE_STEPS`` (100) steps.

    Args:
        seed: seed of the model's initialisation, training and fine-tuning.
        width: channels of the first stage (the others have 2x and 4x).
        blocks: residual blocks per stage.
        batch_size: batch size of ``example_inputs`` (the latency batch).
        fine_tune_seed: seed of the fine-tuning's batch order; default ``seed``. Other values
            keep the trained model and vary only the fine-tuning (for benchmarks).
    """
    splits = shapes_splits()
    key = {
        "seed": seed,
        "width": width,
        "blocks": blocks,
        "steps": _TRAIN_STEPS,
        "data": [SPLIT_SIZES, NOISE, SCALE],
        "batch": _BATCH,
        "v": 1,
    }
    spec: dict[str, Any] = {
        "name": "shapes-resnet",
        "seed": seed,
        "width": width,
        "blocks": blocks,
        "batch_size": batch_size,
    }
    if fine_tune_seed is not None:
        spec["fine_tune_seed"] = fine_tune_seed
    return tensor_task(
        "shapes-resnet",
        make_model=lambda: ShapesResNet(width, blocks),
        splits=splits,
        path=cached_path(f"shapes-resnet-seed{seed}-w{width}-b{blocks}", key),
        train_steps=_TRAIN_STEPS,
        train_schedule=_one_cycle,
        train_batch=_BATCH,
        train_lr=3e-3,
        seed=seed,
        fine_tune_seed=fine_tune_seed,
        example_batch=batch_size,
        spec=spec,
        optimizer="adamw",
        lr=1e-3,
        weight_decay=5e-4,
        distill=(1.0, 4.0),
        lr_schedule="cosine",
    )
