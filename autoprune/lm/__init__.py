"""Language models: perplexity tasks, calibration-based one-shot pruning (magnitude, Wanda,
SparseGPT; unstructured and N:M) and per-layer sparsity allocation (uniform, OWL, searched).
"""

from __future__ import annotations

from autoprune.lm._allocation import owl_allocation, project_to_budget, uniform_allocation
from autoprune.lm._corpus import ByteTokenizer, builtin_corpus
from autoprune.lm._search import AllocationContext, search_allocation
from autoprune.lm._task import causal_lm_task, make_tinylm, perplexity

__all__ = [
    "AllocationContext",
    "ByteTokenizer",
    "builtin_corpus",
    "causal_lm_task",
    "make_tinylm",
    "owl_allocation",
    "perplexity",
    "project_to_budget",
    "search_allocation",
    "uniform_allocation",
]
