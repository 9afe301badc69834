"""Where the built-in corpus was before it joined the tasks stage
(``autoprune/tasks/_lm_corpus.py``): its names, for imports written against this path."""

from __future__ import annotations

from autoprune.tasks._lm_corpus import VOCAB_SIZE, ByteTokenizer, Corpus, builtin_corpus

__all__ = ["VOCAB_SIZE", "ByteTokenizer", "Corpus", "builtin_corpus"]
