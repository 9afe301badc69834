"""The built-in language-model corpus: Python's own documentation, shipped with Python.

``pydoc_data.topics`` holds the text of the language reference's topics (what ``help("for")``
prints): about 80 documents and 460 kB of English with code samples, on every CPython. It
differs between Python builds, so its SHA-256 is part of every cache key made from it.

Tokens are bytes (vocabulary 256): no tokenizer to download or train, and any text encodes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

__all__ = ["ByteTokenizer", "Corpus", "builtin_corpus", "VOCAB_SIZE"]

VOCAB_SIZE = 256


class ByteTokenizer:
    """UTF-8 bytes as token ids (0-255): the built-in task's tokenizer."""

    vocab_size = VOCAB_SIZE

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        values = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        return bytes(int(i) for i in values).decode("utf-8", errors="replace")

    def __call__(self, text: str) -> dict[str, list[int]]:
        return {"input_ids": self.encode(text)}


@dataclass(frozen=True)
class Corpus:
    """Token streams split by document: no document is in two splits."""

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    documents: dict[str, list[str]]
    digest: str


def builtin_corpus(val_share: float = 0.1, test_share: float = 0.1) -> Corpus:
    """Python's documentation topics, split by document into train/val/test.

    Documents are ordered by the hash of their name (a fixed, build-independent shuffle) and
    dealt out until each held-out split holds its share of the bytes.
    """
    from pydoc_data.topics import topics

    docs = sorted(topics.items(), key=lambda kv: hashlib.sha256(kv[0].encode()).hexdigest())
    digest = hashlib.sha256("\x00".join(f"{k}\x01{v}" for k, v in sorted(topics.items())).encode()).hexdigest()
    total = sum(len(v.encode()) for _, v in docs)
    splits: dict[str, list[str]] = {"val": [], "test": [], "train": []}
    sizes = {"val": 0, "test": 0}
    for name, text in docs:
        size = len(text.encode())
        for split, share in (("val", val_share), ("test", test_share)):
            if sizes[split] + size <= share * total * 1.2 and sizes[split] < share * total:
                splits[split].append(name)
                sizes[split] += size
                break
        else:
            splits["train"].append(name)
    tok = ByteTokenizer()

    def stream(names: list[str]) -> torch.Tensor:
        ids: list[int] = []
        for name in names:
            ids.extend(tok.encode(topics[name].strip() + "\n\n"))
        return torch.tensor(ids, dtype=torch.long)

    return Corpus(
        train=stream(splits["train"]),
        val=stream(splits["val"]),
        test=stream(splits["test"]),
        documents=splits,
        digest=digest,
    )
