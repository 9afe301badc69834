"""Tasks for the benchmarks that are NOT built into autoprune: checks that the search generalises.

``signals``: a plain (no residual) 1-D CNN that classifies synthetic signals, the kind of task
the search was first found to lose on. Nothing in autoprune was tuned on it. Use it as a user
task:  python scripts/bench_search.py --tasks 'scripts.bench_tasks:signals' --seeds 0

The signals: 1 x 256 samples, 8 classes. A class is a fundamental frequency (8 close
frequencies, jittered so that neighbours overlap) and a waveform (its harmonics); the tone
lives in a burst of random position and length, over a random drift, a distractor tone and
white noise. Drawn by a fixed-seed generator; the model trains once (AdamW, one-cycle
learning rate) and is cached in ``ap.tasks.cache_dir()``.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import autoprune as ap

LENGTH = 256
CLASSES = 8
SPLIT_SIZES = {"train": 16_000, "val": 2_000, "test": 3_000}
_TRAIN_STEPS = 1200
_BATCH = 64


def draw_signals(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` signals (``n x 1 x 256`` floats) and their labels, the same for the same seed."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, n)
    t = np.arange(LENGTH)[None, :] / LENGTH
    base = 6.0 + 1.3 * (labels % 4)  # cycles per window: 6.0, 7.3, 8.6, 9.9
    freq = (base + rng.normal(0, 0.45, n))[:, None]
    phase = rng.uniform(0, 2 * np.pi, (n, 1))
    square = (labels >= 4)[:, None]  # waveform: sine (classes 0-3) or softened square (4-7)
    w = 2 * np.pi * freq * t + phase
    tone = np.where(square, np.tanh(3 * np.sin(w)) * 0.8 + 0.25 * np.sin(3 * w), np.sin(w))
    start = rng.uniform(0, 0.5, (n, 1))
    width = rng.uniform(0.35, 0.8, (n, 1))
    envelope = 1 / (1 + np.exp(-(t - start) * 40)) / (1 + np.exp((t - start - width) * 40))
    signal = rng.uniform(0.5, 1.0, (n, 1)) * tone * envelope
    signal += rng.uniform(-0.6, 0.6, (n, 1)) * t + rng.normal(0, 0.2, (n, 1))  # drift and offset
    distractor = rng.uniform(1.0, 16.0, (n, 1))
    signal += rng.uniform(0.0, 0.5, (n, 1)) * np.sin(2 * np.pi * distractor * t + rng.uniform(0, 6.3, (n, 1)))
    signal += rng.normal(0, 0.45, signal.shape)
    return torch.from_numpy(signal.astype(np.float32)).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


class SignalsCNN(nn.Module):
    """Five conv-BN-ReLU layers (widths w, 2w, 2w, 4w, 4w; strides 2, 2, 1, 2, 1), average pool, linear."""

    def __init__(self, width: int = 24) -> None:
        super().__init__()
        plan = [(1, width, 7, 2), (width, 2 * width, 5, 2), (2 * width, 2 * width, 5, 1),
                (2 * width, 4 * width, 5, 2), (4 * width, 4 * width, 3, 1)]
        layers: list[nn.Module] = []
        for cin, cout, k, s in plan:
            layers += [nn.Conv1d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm1d(cout), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(4 * width, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=2))


def signals(seed: int = 0, width: int = 24) -> ap.Task:
    """The ``signals`` task (a user task: ``scripts.bench_tasks:signals``)."""
    streams = np.random.SeedSequence(1234).spawn(len(SPLIT_SIZES))
    splits = {name: draw_signals(count, int(s.generate_state(1)[0]))
              for (name, count), s in zip(SPLIT_SIZES.items(), streams, strict=True)}
    loaders = {
        "train": DataLoader(TensorDataset(*splits["train"]), batch_size=_BATCH, shuffle=True),
        "val": DataLoader(TensorDataset(*splits["val"]), batch_size=512),
        "test": DataLoader(TensorDataset(*splits["test"]), batch_size=512),
    }
    key = json.dumps({"seed": seed, "width": width, "steps": _TRAIN_STEPS, "sizes": SPLIT_SIZES, "v": 1}, sort_keys=True)
    path = ap.tasks.cache_dir() / f"bench-signals-{hashlib.sha256(key.encode()).hexdigest()[:10]}.pt"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SignalsCNN(width)
        if path.exists():
            model.load_state_dict(torch.load(path, weights_only=True))
        else:
            opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=_TRAIN_STEPS)
            model.train()
            steps = 0
            while steps < _TRAIN_STEPS:
                for x, y in loaders["train"]:
                    opt.zero_grad()
                    nn.functional.cross_entropy(model(x), y).backward()
                    opt.step()
                    sched.step()
                    steps += 1
                    if steps == _TRAIN_STEPS:
                        break
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            torch.save(model.state_dict(), tmp)
            os.replace(tmp, path)
    task = ap.tasks.from_loaders(model.eval(), **loaders, example_inputs=splits["val"][0][:32].clone(),
                                 optimizer="adamw", lr=1e-3, lr_schedule="cosine", seed=seed, name="signals",
                                 scale="percent")
    task.spec = {"seed": seed, "width": width}
    return task


if __name__ == "__main__":
    task = signals()
    assert task.test is not None
    print(f"signals: validation {task.evaluate(task.model):.2f}%, test {task.test(task.model):.2f}%")
