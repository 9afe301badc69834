"""What the built-in tasks share: the model cache, tensor splits and the task built from them."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from autoprune._lock import file_lock
from autoprune._paths import cache_dir
from autoprune.tasks._base import Task
from autoprune.tasks._loaders import make_runner

__all__ = ["Splits", "building", "cache_dir", "cached_data", "cached_path", "save_atomic", "tensor_task"]

Splits = dict[str, tuple[torch.Tensor, torch.Tensor]]  # "train" / "val" / "test" -> (inputs, labels)


def cached_path(prefix: str, key: dict[str, Any]) -> Path:
    """The cache file of a trained model: every setting that changes the weights is in ``key``."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    return cache_dir() / f"{prefix}-{digest}.pt"


def cached_data(prefix: str, key: dict[str, Any], make: Callable[[], Any]) -> Any:
    """What ``make()`` returns (tensors, in dicts, tuples and lists), drawn once and kept in the
    cache beside the trained models, keyed by every setting in ``key``: a built-in task's data
    then loads in a fraction of a second in every later process, instead of being drawn again
    (seconds for the shapes images) or read through scikit-learn (a second to import).

    A cache file that cannot be read is drawn again and replaced; a cache folder that cannot
    be written only costs the saving.
    """
    path = cached_path(prefix, key)
    with building(path):
        if path.exists():
            try:
                return torch.load(path, weights_only=True)
            except Exception:  # noqa: BLE001 - a damaged or foreign file: draw the data again
                pass
        data = make()
        with contextlib.suppress(OSError):
            save_atomic(data, path)
        return data


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save(obj, path)`` through a temporary file: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


@contextlib.contextmanager
def building(path: Path) -> Iterator[None]:
    """Held while a cached file is checked and, if missing, built: parallel processes (search
    workers, test workers) wait for the one that builds it instead of each training the same
    model. A cache folder that cannot be written is no lock (the file is then not saved either)."""
    with contextlib.ExitStack() as stack:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            stack.enter_context(file_lock(path.with_name(path.name + ".lock")))
        except OSError:
            pass
        yield


def _loader(split: tuple[torch.Tensor, torch.Tensor], batch: int, shuffle: bool) -> DataLoader:
    return DataLoader(TensorDataset(*split), batch_size=batch, shuffle=shuffle)


def tensor_task(
    name: str,
    *,
    make_model: Callable[[], nn.Module],
    splits: Splits,
    path: Path,
    train_steps: int,
    train_schedule: Callable[[torch.optim.Optimizer, int], Any] | None,
    train_batch: int,
    train_lr: float,
    seed: int,
    fine_tune_seed: int | None = None,
    example_batch: int,
    spec: dict[str, Any],
    **recipe: Any,
) -> Task:
    """A built-in task on tensors, its model trained once and cached at ``path``.

    ``seed`` seeds the model's initialisation and training, and the fine-tuning unless
    ``fine_tune_seed`` is given. The model trains for ``train_steps`` steps of ``train_batch`` with the fine-tune
    ``recipe`` (optimizer, weight_decay), learning rate ``train_lr`` and ``train_schedule``.
    ``evaluate`` scores the validation split, ``test`` the test split. Example inputs come
    from the validation split, so latency batches never hold test images.
    """
    loaders: dict[str, Any] = {
        "train": _loader(splits["train"], train_batch, shuffle=True),
        "val": _loader(splits["val"], 512, shuffle=False),
        "test": _loader(splits["test"], 512, shuffle=False),
    }

    def untrained() -> nn.Module:
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
            torch.manual_seed(seed)
            return make_model()

    def build() -> nn.Module:
        model = untrained()
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()

    model = untrained()
    with building(path):
        if path.exists():
            model.load_state_dict(torch.load(path, weights_only=True))
        else:
            # Trained with the task's own loop and recipe, with the schedule of a from-scratch run.
            settings = {k: v for k, v in recipe.items() if k not in ("distill", "lr", "lr_schedule")}
            trainer = make_runner(model, **loaders, seed=seed, lr=train_lr, **settings)
            trainer.run_steps(model, train_steps, distill=False, schedule=train_schedule)
            save_atomic(model.state_dict(), path)
    task = Task.from_loaders(
        model.eval(),
        **loaders,
        example_inputs=splits["val"][0][:example_batch].clone(),
        seed=seed if fine_tune_seed is None else fine_tune_seed,
        name=name,
        scale="percent",
        **recipe,
    )
    return dataclasses.replace(task, model_factory=build, spec=spec)
