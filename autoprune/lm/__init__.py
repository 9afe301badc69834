"""Language models: perplexity tasks, calibration-based one-shot pruning (magnitude, Wanda,
SparseGPT; unstructured and N:M), per-layer sparsity allocation (uniform, OWL, searched),
structural pruning (heads, MLP channels, blocks) searched against measured prefill and decode
speedups, and saving what it makes for ``from_pretrained``.
"""

from __future__ import annotations

from autoprune.lm._allocation import owl_allocation, project_to_budget, uniform_allocation
from autoprune.lm._corpus import ByteTokenizer, builtin_corpus
from autoprune.lm._hf import from_pretrained, save_pretrained
from autoprune.lm._latency import Decode, lm_speedups
from autoprune.lm._search import AllocationContext, search_allocation
from autoprune.lm._structured import search_structure, structure_schedule
from autoprune.lm._task import causal_lm_task, make_tinylm, perplexity

__all__ = [
    "AllocationContext",
    "ByteTokenizer",
    "Decode",
    "builtin_corpus",
    "causal_lm_task",
    "from_pretrained",
    "lm_speedups",
    "make_tinylm",
    "owl_allocation",
    "perplexity",
    "project_to_budget",
    "save_pretrained",
    "search_allocation",
    "search_structure",
    "structure_schedule",
    "uniform_allocation",
]
