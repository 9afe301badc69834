"""The built-in language-model task ``tinylm`` (a perplexity task, ``Task.for_causal_lm``)."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from autoprune.tasks._base import Task
from autoprune.tasks._builtin import building, cached_path
from autoprune.tasks._lm_corpus import ByteTokenizer, builtin_corpus
from autoprune.tasks._lm_model import build_tiny_llama, save_atomic, tiny_llama_config, train_causal_lm

__all__ = ["make_tinylm"]


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
    key = {"task": "tinylm", "seed": seed, "corpus": corpus.digest, "config": config.to_diff_dict(), **recipe,
           "transformers": _major_minor("transformers"), "v": 1}  # fmt: skip
    path = cached_path("tinylm", key)

    def build() -> nn.Module:
        model = build_tiny_llama(config, seed)
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()

    with building(path):
        if not path.exists():
            model = build_tiny_llama(config, seed)
            train_causal_lm(model, corpus.train, seed=seed, **recipe)  # type: ignore[arg-type]
            save_atomic(model.state_dict(), path)
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


def _major_minor(package: str) -> str:
    from importlib.metadata import version

    return ".".join(version(package).split(".")[:2])
