"""Where the causal-LM task was before it joined the tasks stage (``autoprune/tasks/_lm.py``,
``_tinylm.py``): its names, for imports written against this path."""

from __future__ import annotations

from autoprune.tasks._base import Task
from autoprune.tasks._lm import logits_of, perplexity, to_tokens, window_nll
from autoprune.tasks._tinylm import make_tinylm

__all__ = ["causal_lm_task", "logits_of", "make_tinylm", "perplexity", "to_tokens", "window_nll"]

causal_lm_task = Task.for_causal_lm  # the function form of ``Task.for_causal_lm``
