"""The built-in language-model task ``tinylm`` (a perplexity task, ``Task.for_causal_lm``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.tasks._base import Task
from autoprune.tasks._builtin import building, cached_path, save_atomic
from autoprune.tasks._lm_corpus import ByteTokenizer, Corpus, builtin_corpus
from autoprune.tasks._lm_model import build_tiny_llama, tiny_llama_config, train_causal_lm

__all__ = ["make_tinylm", "trained_weights"]


def make_tinylm(
    seed: int = 0,
    train_steps: int = 600,
    batch_size: int = 16,
    calibration_windows: int = 32,
    calibration_seed: int | None = None,
) -> Task:
    """The built-in language-model task ``tinylm``: a ~1M-parameter Llama-style decoder
    trained on Python's documentation topics (byte tokens, 128-token windows), cached in
    ``~/.cache/autoprune`` under a key that includes the text's hash.

    ``seed`` seeds the model's training; ``calibration_seed`` (default ``seed``) the draw of
    calibration windows from the training split."""
    calibration_seed = seed if calibration_seed is None else calibration_seed
    corpus = builtin_corpus()
    config = tiny_llama_config()
    recipe = {"steps": train_steps, "batch": batch_size, "context": 128, "lr": 3e-3}
    path = trained_weights("tinylm", "tinylm", config, corpus, seed, recipe)

    def build() -> nn.Module:
        model = build_tiny_llama(config, seed)
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()

    task = Task.for_causal_lm(
        build(),
        train=corpus.train,
        val=corpus.val,
        test=corpus.test,
        tokenizer=ByteTokenizer(),
        context_length=128,
        calibration_windows=calibration_windows,
        calibration_seed=calibration_seed,
        batch_size=batch_size,
        name="tinylm",
    )
    spec = {"name": "tinylm", "seed": seed, "train_steps": train_steps, "batch_size": batch_size,
            "calibration_windows": calibration_windows, "calibration_seed": calibration_seed}  # fmt: skip
    return dataclasses.replace(task, model_factory=build, spec=spec)


def trained_weights(prefix: str, name: str, config: Any, corpus: Corpus, seed: int, recipe: dict[str, Any]) -> Path:
    """The cached weights of a tiny Llama (``config``) trained on ``corpus.train`` with ``recipe``
    (:func:`train_causal_lm`'s arguments), trained by the first process that asks, under a key
    holding everything that changes them: the task ``name``, the seed, the text's hash, the
    config, the recipe and the transformers version."""
    key = {"task": name, "seed": seed, "corpus": corpus.digest, "config": config.to_diff_dict(), **recipe,
           "transformers": _major_minor("transformers"), "v": 1}  # fmt: skip
    path = cached_path(prefix, key)
    with building(path):
        if not path.exists():
            model = build_tiny_llama(config, seed)
            with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
                train_causal_lm(model, corpus.train, seed=seed, **recipe)
            save_atomic(model.state_dict(), path)
    return path


def _major_minor(package: str) -> str:
    from importlib.metadata import version

    return ".".join(version(package).split(".")[:2])
