"""A small language-model task for tests and examples: a random-initialised Llama-style
decoder (hidden size 32, 2 blocks) on the built-in corpus, scored on its first windows.
It trains for ``train_steps`` steps (seconds), so its perplexity is well below the byte
vocabulary's 256 but far from the built-in ``tinylm``'s."""

from __future__ import annotations

import torch

from autoprune.tasks import Task
from autoprune.tasks._lm_corpus import ByteTokenizer, builtin_corpus
from autoprune.tasks._lm_model import build_tiny_llama, tiny_llama_config, train_causal_lm

__all__ = ["tiny"]


def tiny(seed: int = 0, train_steps: int = 30) -> Task:
    """``autoprune.testing.lm:tiny``: the task, rebuilt identically from the same arguments."""
    corpus = builtin_corpus()
    config = tiny_llama_config(hidden=32, layers=2, heads=4, kv_heads=2, intermediate=64, context=64)
    model = build_tiny_llama(config, seed)
    with torch.random.fork_rng(devices=[]):
        train_causal_lm(model, corpus.train, steps=train_steps, batch=8, context=64, lr=1e-2, seed=seed, warmup=5)
    return Task.for_causal_lm(
        model, train=corpus.train, val=corpus.val, test=corpus.test, tokenizer=ByteTokenizer(), context_length=64,
        calibration_windows=8, calibration_seed=seed, batch_size=16, max_eval_windows=48, name="tiny-lm",
    )  # fmt: skip
