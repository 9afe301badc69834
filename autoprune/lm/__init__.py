"""Language models: perplexity tasks, calibration-based one-shot pruning (magnitude, Wanda,
SparseGPT; unstructured and N:M) and per-layer sparsity allocation (uniform, OWL, searched).
"""

from __future__ import annotations

from autoprune.lm._corpus import ByteTokenizer, builtin_corpus
from autoprune.lm._task import causal_lm_task, make_tinylm, perplexity

__all__ = ["ByteTokenizer", "builtin_corpus", "causal_lm_task", "make_tinylm", "perplexity"]
