"""The built-in ``digits`` task: a small CNN on scikit-learn's 8x8 handwritten digits.

The data ships inside scikit-learn (no download): 1797 images, split into train (60%),
validation (15%, scored by the search) and test (25%, held out) by a fixed seed. The model
trains in seconds on first use and is cached on disk keyed by its seed and hyper-parameters,
so later runs start at once.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

import torch
from torch import nn

from autoprune.tasks._base import Task
from autoprune.tasks._builtin import Splits, cache_dir, cached_data, cached_path, tensor_task

__all__ = ["DigitsNet", "make_digits", "digits_splits", "cache_dir"]

_TRAIN_EPOCHS = 30
_BATCH = 64


class DigitsNet(nn.Module):
    """Conv-BN-ReLU CNN for 1x8x8 images: over-parameterised on purpose (room to prune)."""

    def __init__(self, width: int = 64, num_classes: int = 10) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1, bias=False),
            nn.BatchNorm2d(w),
            nn.ReLU(inplace=True),
            nn.Conv2d(w, 2 * w, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * w * 4, 2 * w), nn.ReLU(inplace=True), nn.Linear(2 * w, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def digits_splits(split_seed: int = 0) -> tuple[Splits, dict[str, list[int]]]:
    """The train/validation/test splits (stratified) and the image indices of each.

    The split depends on ``split_seed`` only, not on the model's seed, so accuracies of
    different seeds and studies compare on the same images. Read through scikit-learn once,
    then from the cache (keyed by scikit-learn's version).
    """
    key = {"split_seed": split_seed, "scikit-learn": importlib.metadata.version("scikit-learn"), "v": 1}
    splits, index = cached_data(f"digits-data-split{split_seed}", key, lambda: _digits_splits(split_seed))
    return {k: (x, y) for k, (x, y) in splits.items()}, index


def _digits_splits(split_seed: int) -> tuple[Splits, dict[str, list[int]]]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    everything = list(range(len(y)))
    rest, test = train_test_split(everything, test_size=0.25, random_state=split_seed, stratify=digits.target)
    train, val = train_test_split(rest, test_size=0.2, random_state=split_seed, stratify=digits.target[rest])
    index = {"train": sorted(train), "val": sorted(val), "test": sorted(test)}
    return {k: (x[v], y[v]) for k, v in index.items()}, index


def make_digits(seed: int = 0, width: int = 64, batch_size: int = 64) -> Task:
    """Build the ``digits`` task.

    ``evaluate`` scores the validation split (270 images), ``test`` the test split (450).
    Fine-tuning: Adam, learning rate 5e-4, batches of 64; ``distill_fine_tune`` adds
    distillation from the unpruned model (weight 1, temperature 4).

    Args:
        seed: seed of the model's initialisation and training (the split is fixed).
        width: channel width of the CNN.
        batch_size: batch size of ``example_inputs`` (the latency batch).
    """
    splits, _ = digits_splits()
    key = {"seed": seed, "width": width, "epochs": _TRAIN_EPOCHS, "splits": "train/val/test 60/15/25", "v": 2}
    spec: dict[str, Any] = {"name": "digits", "seed": seed, "width": width, "batch_size": batch_size}
    return tensor_task(
        "digits",
        make_model=lambda: DigitsNet(width),
        splits=splits,
        path=cached_path(f"digits-seed{seed}-w{width}", key),
        train_steps=_TRAIN_EPOCHS * (len(splits["train"][1]) // _BATCH),
        train_schedule=None,
        train_batch=_BATCH,
        train_lr=1e-3,
        seed=seed,
        example_batch=batch_size,
        spec=spec,
        optimizer="adamw",
        lr=5e-4,
        weight_decay=0.0,
        distill=(1.0, 4.0),
    )
