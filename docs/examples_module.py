"""The task factory of the "bring your own model" example (``docs/byo_model.py``).

A torchvision ResNet-18 classifies scikit-learn's handwritten digits, upscaled to 3x16x16
(nothing is downloaded). :func:`make_task` stands for what a user already has, a trained
model and its DataLoaders, and turns it into an autoprune task with ``Task.from_loaders``.
The search finds it by its path, from the repository root::

    autoprune search --task docs.examples_module:make_task --trials 20

The factory is called again by search workers and by ``autoprune apply``, so it must give
the same model every time: the training is seeded and its weights are cached.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import autoprune as ap


def digits_as_images(seed: int = 0) -> dict[str, TensorDataset]:
    """Digits as 3x16x16 images, split 60/15/25 into train/val/test (fixed by ``seed``)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    x = (x - x.mean()) / x.std()
    y = torch.tensor(digits.target)
    rest, test = train_test_split(range(len(y)), test_size=0.25, random_state=seed, stratify=y)
    train, val = train_test_split(rest, test_size=0.2, random_state=seed, stratify=y[rest])
    return {name: TensorDataset(x[idx], y[idx]) for name, idx in (("train", train), ("val", val), ("test", test))}


def train_resnet(data: TensorDataset, steps: int, seed: int = 0) -> nn.Module:
    """The user's own training recipe (any would do): ResNet-18, AdamW, ``steps`` steps."""
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(num_classes=10)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    loader = DataLoader(data, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(seed))
    model.train()
    done = 0
    while done < steps:
        for x, y in loader:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            done += 1
            if done == steps:
                break
    return model.eval()


def make_task(train_steps: int = 300, batch_size: int = 64, seed: int = 0, distill: bool = True) -> ap.Task:
    """The example task: a trained ResNet-18 and the three DataLoaders of its data.

    Args:
        train_steps: training steps of the unpruned model (cached after the first call).
        batch_size: fine-tuning batch size.
        seed: seed of the split, the training and the fine-tuning.
        distill: offer fine-tuning with distillation from the unpruned model.
    """
    data = digits_as_images(seed)
    weights = ap.tasks.cache_dir() / f"docs-resnet18-digits-steps{train_steps}-seed{seed}.pt"
    if weights.exists():
        model = torchvision.models.resnet18(num_classes=10)
        model.load_state_dict(torch.load(weights, weights_only=True))
        model.eval()
    else:
        model = train_resnet(data["train"], train_steps, seed)
        weights.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), weights)

    shuffled = DataLoader(data["train"], batch_size=batch_size, shuffle=True)
    return ap.Task.from_loaders(
        model,
        train=shuffled,  # fine_tune and calibrate
        val=DataLoader(data["val"], batch_size=256),  # evaluate: what the search optimises
        test=DataLoader(data["test"], batch_size=256),  # test: reported, never seen by the search
        optimizer="adamw",
        lr=5e-4,
        weight_decay=1e-4,
        distill=(1.0, 4.0) if distill else None,  # (weight, temperature)
        seed=seed,
        name="resnet18-digits",
    )


def make_small_task() -> ap.Task:
    """The same task at a test's scale: a briefly trained model, small fine-tuning batches."""
    return make_task(train_steps=40, batch_size=16)
