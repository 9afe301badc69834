"""The built-in ``digits`` task: a small CNN on scikit-learn's 8x8 handwritten digits.

The data ships inside scikit-learn (no download). The model trains in seconds on first use
and is cached on disk keyed by its seed and hyper-parameters, so later runs start at once.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import torch
from torch import nn

from autoprune._paths import cache_dir
from autoprune.tasks._base import Task

__all__ = ["DigitsNet", "make_digits", "cache_dir"]

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


def _load_data(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    # The held-out split is fixed (random_state=0) whatever the seed, so accuracies of
    # different seeds and studies compare on the same images.
    idx_train, idx_test = train_test_split(list(range(len(y))), test_size=0.25, random_state=0, stratify=digits.target)
    return x[idx_train], y[idx_train], x[idx_test], y[idx_test]


def _train_steps(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float, gen: torch.Generator
) -> None:
    # Uses the process's torch thread setting: the search gives each worker its share.
    _train_loop(model, x, y, steps, lr, gen)


def _train_loop(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float, gen: torch.Generator
) -> None:
    was_training = model.training
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(steps):
        idx = torch.randint(0, len(y), (_BATCH,), generator=gen)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x[idx]), y[idx])
        if not torch.isfinite(loss):
            raise FloatingPointError(f"fine-tuning loss became {loss.item()}")
        loss.backward()
        opt.step()
    model.train(was_training)


def make_digits(seed: int = 0, width: int = 64, batch_size: int = 64) -> Task:
    """Build the ``digits`` task.

    Args:
        seed: seed of the model's initialisation and training (the split is fixed).
        width: channel width of the CNN.
        batch_size: batch size of ``example_inputs`` (the latency batch).
    """
    x_train, y_train, x_test, y_test = _load_data(seed)
    key = hashlib.sha256(json.dumps({"seed": seed, "width": width, "epochs": _TRAIN_EPOCHS, "v": 1}).encode())
    path = cache_dir() / f"digits-seed{seed}-w{width}-{key.hexdigest()[:10]}.pt"

    def build() -> nn.Module:
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
            torch.manual_seed(seed)
            model = DigitsNet(width)
        if path.exists():
            model.load_state_dict(torch.load(path, weights_only=True))
        else:
            gen = torch.Generator().manual_seed(seed)
            steps = _TRAIN_EPOCHS * (len(y_train) // _BATCH)
            _train_steps(model, x_train, y_train, steps, 1e-3, gen)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            torch.save(model.state_dict(), tmp)
            os.replace(tmp, path)  # atomic: parallel workers never read half a file
        return model.eval()

    @torch.inference_mode()
    def evaluate(model: nn.Module) -> float:
        was_training = model.training
        model.eval()
        pred = model(x_test).argmax(dim=1)
        model.train(was_training)
        return float((pred == y_test).float().mean()) * 100.0

    def fine_tune(model: nn.Module, steps: int) -> None:
        # Seeded per call from the model's size, so the same schedule fine-tunes the same way.
        n = sum(p.numel() for p in model.parameters())
        gen = torch.Generator().manual_seed(seed * 1_000_003 + n + steps)
        _train_steps(model, x_train, y_train, steps, 5e-4, gen)
        model.eval()

    model = build()
    spec: dict[str, Any] = {"name": "digits", "seed": seed, "width": width, "batch_size": batch_size}
    return Task(
        name="digits",
        model=model,
        example_inputs=x_test[:batch_size].clone(),
        evaluate=evaluate,
        fine_tune=fine_tune,
        model_factory=build,
        metric_name="accuracy",
        spec=spec,
    )
