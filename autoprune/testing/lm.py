"""A small language-model task for tests and examples: a random-initialised Llama-style
decoder (hidden size 32, 2 blocks) on the built-in corpus, scored on its first windows.
It trains for ``train_steps`` steps (seconds) on first use and is cached beside the other
trained models (``autoprune.tasks.cache_dir()``), so its perplexity is well below the byte
vocabulary's 256 but far from the built-in ``tinylm``'s."""

from __future__ import annotations

import torch

from autoprune.tasks import Task
from autoprune.tasks._lm_corpus import ByteTokenizer, builtin_corpus
from autoprune.tasks._lm_model import build_tiny_llama, tiny_llama_config
from autoprune.tasks._tinylm import trained_weights

__all__ = ["tiny"]


def tiny(seed: int = 0, train_steps: int = 30) -> Task:
    """``autoprune.testing.lm:tiny``: the task, rebuilt identically from the same arguments."""
    corpus = builtin_corpus()
    config = tiny_llama_config(hidden=32, layers=2, heads=4, kv_heads=2, intermediate=64, context=64)
    recipe = {"steps": train_steps, "batch": 8, "context": 64, "lr": 1e-2, "warmup": 5}
    path = trained_weights("testing-tiny-lm", "tiny-lm", config, corpus, seed, recipe)
    model = build_tiny_llama(config, seed)
    model.load_state_dict(torch.load(path, weights_only=True))
    model.eval()
    return Task.for_causal_lm(
        model, train=corpus.train, val=corpus.val, test=corpus.test, tokenizer=ByteTokenizer(), context_length=64,
        calibration_windows=8, calibration_seed=seed, batch_size=16, max_eval_windows=48, name="tiny-lm",
    )  # fmt: skip
