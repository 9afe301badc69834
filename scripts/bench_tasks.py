"""Tasks for the benchmarks that are NOT built into autoprune, each loaded as a user task
(``--tasks 'scripts.bench_tasks:NAME'``), trained once and cached in ``ap.tasks.cache_dir()``.

DEVELOPMENT task (autoprune's defaults were tuned on it, as on the built-in ``digits`` and
``shapes-resnet``):

- ``signals``: a plain (no residual) 1-D CNN that classifies synthetic signals, the kind of task
  the search was first found to lose on; ``sensitivity_resource``, the global references, the
  neighbour share, the pause window and the noise allowance were chosen with its test results.

HELD-OUT tasks (frozen: no default of autoprune may be chosen from their numbers; changing
them, their data or their training makes earlier results incomparable, so don't):

- ``tabular``: an MLP (Linear-BatchNorm-ReLU, no convolution) on generated tabular data
  (scikit-learn's ``make_classification``);
- ``textures``: a MobileNetV2-style net (inverted residuals, depthwise convolutions, ReLU6) on
  generated images of oriented gratings.

Each is a different architecture family from the development tasks (plain CNNs, a ResNet, a
1-D CNN), with a validation split (what the search sees) and a test split of 3000 examples
(what is reported: 0.5 points is 15 examples).

Use one:  python scripts/bench_search.py --tasks 'scripts.bench_tasks:tabular' --seeds 0

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
from collections.abc import Callable

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


def _trained(model: nn.Module, train: DataLoader, *, name: str, key: dict[str, object], steps: int,
             lr: float) -> nn.Module:
    """``model`` trained by AdamW with a one-cycle learning rate for ``steps`` batches of
    ``train``, or loaded from the cache file that ``name`` and ``key`` name."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    path = ap.tasks.cache_dir() / f"bench-{name}-{digest}.pt"
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    done = 0
    while done < steps:
        for x, y in train:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            sched.step()
            done += 1
            if done == steps:
                break
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    return model.eval()


def _splits(draw: Callable[[int, int], tuple[torch.Tensor, torch.Tensor]], sizes: dict[str, int],
            entropy: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each split drawn by ``draw(count, seed)`` from its own stream of a fixed seed sequence."""
    streams = np.random.SeedSequence(entropy).spawn(len(sizes))
    return {name: draw(count, int(s.generate_state(1)[0]))
            for (name, count), s in zip(sizes.items(), streams, strict=True)}


def _loaders(splits: dict[str, tuple[torch.Tensor, torch.Tensor]], batch: int) -> dict[str, DataLoader]:
    return {
        "train": DataLoader(TensorDataset(*splits["train"]), batch_size=batch, shuffle=True),
        "val": DataLoader(TensorDataset(*splits["val"]), batch_size=512),
        "test": DataLoader(TensorDataset(*splits["test"]), batch_size=512),
    }


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
    """The ``signals`` task (DEVELOPMENT: defaults were tuned on it; ``scripts.bench_tasks:signals``)."""
    splits = _splits(draw_signals, SPLIT_SIZES, 1234)
    loaders = _loaders(splits, _BATCH)
    key = {"seed": seed, "width": width, "steps": _TRAIN_STEPS, "sizes": SPLIT_SIZES, "v": 1}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _trained(SignalsCNN(width), loaders["train"], name="signals", key=key, steps=_TRAIN_STEPS, lr=3e-3)
    task = ap.tasks.from_loaders(model, **loaders, example_inputs=splits["val"][0][:32].clone(),
                                 optimizer="adamw", lr=1e-3, lr_schedule="cosine", seed=seed, name="signals",
                                 scale="percent")
    task.spec = {"seed": seed, "width": width}
    return task


# ----------------------------------------------------------------------------- held out: tabular
# The held-out tasks' fine-tune (AdamW, cosine), fixed before any search ran: 100 steps on the
# unpruned model cost it 0.2-0.35 validation points at this rate, 0.3-0.85 at 1e-3.
_FINE_TUNE_LR = 3e-4
TABULAR_FEATURES = 40
TABULAR_CLASSES = 10
TABULAR_SIZES = {"train": 20_000, "val": 2_000, "test": 3_000}
_TABULAR_STEPS = 2000


def tabular_splits() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Train, validation and test rows (40 standardised features, 10 classes of 3 clusters each,
    2% of labels flipped), disjoint blocks of one ``make_classification`` draw with a fixed seed."""
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=sum(TABULAR_SIZES.values()), n_features=TABULAR_FEATURES,
                               n_informative=24, n_redundant=8, n_classes=TABULAR_CLASSES,
                               n_clusters_per_class=3, class_sep=1.6, flip_y=0.02, random_state=20261203)
    n_train = TABULAR_SIZES["train"]
    mean, std = x[:n_train].mean(0), x[:n_train].std(0)  # the train split's statistics only
    x = (x - mean) / std
    splits, start = {}, 0
    for name, count in TABULAR_SIZES.items():
        splits[name] = (torch.from_numpy(x[start:start + count].astype(np.float32)),
                        torch.from_numpy(y[start:start + count].astype(np.int64)))
        start += count
    return splits


class TabularMLP(nn.Module):
    """Three hidden Linear-BatchNorm-ReLU layers (widths 2w, 2w, w), then a linear classifier."""

    def __init__(self, width: int = 256) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for cin, cout in ((TABULAR_FEATURES, 2 * width), (2 * width, 2 * width), (2 * width, width)):
            layers += [nn.Linear(cin, cout, bias=False), nn.BatchNorm1d(cout), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, TABULAR_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def tabular(seed: int = 0, width: int = 256) -> ap.Task:
    """The ``tabular`` task: HELD OUT and frozen (no default may be chosen from its numbers);
    ``scripts.bench_tasks:tabular``."""
    splits = tabular_splits()
    loaders = _loaders(splits, 128)
    key = {"seed": seed, "width": width, "steps": _TABULAR_STEPS, "sizes": TABULAR_SIZES, "v": 1}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _trained(TabularMLP(width), loaders["train"], name="tabular", key=key, steps=_TABULAR_STEPS, lr=3e-3)
    task = ap.tasks.from_loaders(model, **loaders, example_inputs=splits["val"][0][:32].clone(),
                                 optimizer="adamw", lr=_FINE_TUNE_LR, lr_schedule="cosine", seed=seed, name="tabular",
                                 scale="percent")
    task.spec = {"seed": seed, "width": width}
    return task


# ----------------------------------------------------------------------------- held out: textures
TEXTURE_SIZE = 16
TEXTURE_CLASSES = 10
TEXTURE_SIZES = {"train": 12_000, "val": 2_000, "test": 3_000}
_TEXTURE_STEPS = 2000


def draw_textures(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images (``n x 3 x 16 x 16``) and labels, the same for the same seed.

    A class is the orientation of a grating (10 angles 18 degrees apart, jittered so that
    neighbours overlap) seen through a soft window at a random place, with a random frequency,
    phase and colour, over a weaker distractor grating of any orientation and pixel noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, TEXTURE_CLASSES, n)
    coords = (np.arange(TEXTURE_SIZE) - TEXTURE_SIZE / 2) / TEXTURE_SIZE
    yy, xx = np.meshgrid(coords, coords, indexing="ij")

    def grating(angle: np.ndarray, cycles: np.ndarray) -> np.ndarray:
        a, c = angle[:, None, None], cycles[:, None, None]
        phase = rng.uniform(0, 2 * np.pi, (len(angle), 1, 1))
        return np.sin(2 * np.pi * c * (xx * np.cos(a) + yy * np.sin(a)) + phase)

    angle = np.pi * labels / TEXTURE_CLASSES + rng.normal(0, np.deg2rad(4.0), n)
    tone = grating(angle, rng.uniform(1.5, 3.5, n))
    centre = rng.uniform(-0.25, 0.25, (n, 2, 1, 1))
    radius = rng.uniform(0.25, 0.5, (n, 1, 1))
    window = np.exp(-((xx - centre[:, 0]) ** 2 + (yy - centre[:, 1]) ** 2) / (2 * radius**2))
    distractor = grating(rng.uniform(0, np.pi, n), rng.uniform(1.0, 4.0, n)) * rng.uniform(0.0, 0.4, (n, 1, 1))
    gray = rng.uniform(0.5, 1.0, (n, 1, 1)) * tone * window + distractor
    colour = rng.dirichlet(np.ones(3), n)[:, :, None, None] * 2.0  # how the grey pattern is tinted
    images = gray[:, None] * colour + rng.normal(0, 0.4, (n, 3, TEXTURE_SIZE, TEXTURE_SIZE))
    return torch.from_numpy(images.astype(np.float32)), torch.from_numpy(labels.astype(np.int64))


class _InvertedResidual(nn.Module):
    """1x1 expand, 3x3 depthwise, 1x1 project (BatchNorm, ReLU6), with the identity added
    when the shape allows (MobileNetV2)."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        self.residual = stride == 1 and c_in == c_out
        self.block = nn.Sequential(
            nn.Conv2d(c_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.residual else out


class TexturesMobileNet(nn.Module):
    """A MobileNetV2-style net: stem, five inverted residuals (widths w, w, 2w, 2w, 4w; strides
    1, 1, 2, 1, 2; expansion 4), a 1x1 head to 8w, average pool, linear."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(3, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU6())
        self.blocks = nn.Sequential(
            _InvertedResidual(w, w, 1, 4), _InvertedResidual(w, w, 1, 4), _InvertedResidual(w, 2 * w, 2, 4),
            _InvertedResidual(2 * w, 2 * w, 1, 4), _InvertedResidual(2 * w, 4 * w, 2, 4),
        )  # fmt: skip
        self.head = nn.Sequential(nn.Conv2d(4 * w, 8 * w, 1, bias=False), nn.BatchNorm2d(8 * w), nn.ReLU6())
        self.classifier = nn.Linear(8 * w, TEXTURE_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.head(self.blocks(self.stem(x))).mean(dim=(2, 3)))


def textures(seed: int = 0, width: int = 8) -> ap.Task:
    """The ``textures`` task: HELD OUT and frozen (no default may be chosen from its numbers);
    ``scripts.bench_tasks:textures``."""
    splits = _splits(draw_textures, TEXTURE_SIZES, 4321)
    loaders = _loaders(splits, 32)
    key = {"seed": seed, "width": width, "steps": _TEXTURE_STEPS, "sizes": TEXTURE_SIZES, "v": 1}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _trained(TexturesMobileNet(width), loaders["train"], name="textures", key=key,
                         steps=_TEXTURE_STEPS, lr=3e-3)
    task = ap.tasks.from_loaders(model, **loaders, example_inputs=splits["val"][0][:32].clone(),
                                 optimizer="adamw", lr=_FINE_TUNE_LR, lr_schedule="cosine", seed=seed, name="textures",
                                 scale="percent")
    task.spec = {"seed": seed, "width": width}
    return task


FACTORIES = {"signals": signals, "tabular": tabular, "textures": textures}
DEVELOPMENT = ("signals",)  # tuned on, like the built-in digits and shapes-resnet
HELD_OUT = ("tabular", "textures")  # frozen: never tuned on


if __name__ == "__main__":
    import sys

    for name in sys.argv[1:] or list(FACTORIES):
        task = FACTORIES[name]()
        assert task.test is not None
        print(f"{name}: validation {task.evaluate(task.model):.2f}%, test {task.test(task.model):.2f}%", flush=True)
