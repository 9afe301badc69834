"""Perplexity tasks for causal language models: what ``Task.for_causal_lm`` builds (the
built-in ``tinylm`` task is in ``_tinylm``).

Perplexity follows the pruning papers (SparseGPT, Wanda, OWL): the split's token stream is
cut into non-overlapping windows of ``context_length`` tokens, each window is scored on its
own (no state carried over), and the perplexity is ``exp`` of the mean next-token negative
log-likelihood over every predicted token. Calibration windows (for Wanda and SparseGPT) are
drawn from the **train** split at random offsets with a fixed seed.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from autoprune._errors import TaskError
from autoprune.tasks._lm_model import random_windows, train_causal_lm

__all__ = ["causal_lm_fields", "perplexity", "window_nll", "logits_of", "to_tokens"]

TextOrTokens = torch.Tensor | str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]]


def to_tokens(data: TextOrTokens, tokenizer: Any, split: str) -> torch.Tensor:
    """One 1-D stream of token ids from a tensor, a list of ids, a list of id lists
    (documents, joined in order), text or a list of texts (tokenized with ``tokenizer``)."""
    if isinstance(data, torch.Tensor):
        if data.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TaskError(f"`{split}` token ids must be an integer tensor, but got dtype={data.dtype}")
        return data.reshape(-1).long()
    if isinstance(data, str):
        data = [data]
    if not isinstance(data, Sequence) or len(data) == 0:
        raise TaskError(f"`{split}` must be token ids (a tensor or list) or text, but got {type(data).__name__}")
    if all(isinstance(d, str) for d in data):
        if tokenizer is None:
            raise TaskError(f"`{split}` is text: pass tokenizer= (a Hugging Face tokenizer or any text -> ids callable)")
        ids: list[int] = []
        for text in data:
            encoded = tokenizer(text)
            got = encoded["input_ids"] if isinstance(encoded, dict) or hasattr(encoded, "keys") else encoded
            ids.extend(int(i) for i in got)
        return torch.tensor(ids, dtype=torch.long)
    if all(isinstance(d, int) and not isinstance(d, bool) for d in data):
        return torch.tensor(list(data), dtype=torch.long)
    if all(isinstance(d, Sequence) and not isinstance(d, str) for d in data):
        return torch.tensor([int(i) for doc in data for i in doc], dtype=torch.long)  # type: ignore[union-attr]
    raise TaskError(f"`{split}` mixes text and token ids; give one or the other")


def logits_of(output: Any) -> torch.Tensor:
    """The logits of a causal LM's output: ``output.logits``, ``output["logits"]``, the first
    element of a tuple, or the tensor itself."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, dict):
        logits = output.get("logits")
    if logits is None and isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        logits = output[0]
    if not isinstance(logits, torch.Tensor):
        raise TaskError(
            f"the model returned {type(output).__name__} with no logits; a causal LM task needs a model that returns "
            "logits (a tensor of shape (batch, tokens, vocabulary), or an output with .logits)"
        )
    return logits


def _forward_kwargs(model: nn.Module) -> dict[str, Any]:
    """``use_cache=False`` where the model's forward takes it: no KV cache while scoring or tracing."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return {}
    return {"use_cache": False} if "use_cache" in params else {}


def window_nll(model: nn.Module, windows: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """Summed next-token NLL (nats) of each window, shape ``(n_windows,)``; every window
    predicts ``length - 1`` tokens."""
    kwargs = _forward_kwargs(model)
    out = []
    with torch.inference_mode():
        for i in range(0, len(windows), batch_size):
            x = windows[i : i + batch_size]
            logits = logits_of(model(input_ids=x, **kwargs) if kwargs else model(x)).float()
            if logits.dim() != 3 or logits.shape[:2] != x.shape:
                raise TaskError(
                    f"the model's logits have shape {tuple(logits.shape)}; a causal LM task needs "
                    f"(batch, tokens, vocabulary) = ({x.shape[0]}, {x.shape[1]}, V)"
                )
            nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="none")
            out.append(nll.view(x.shape[0], -1).double().sum(dim=1))
    return torch.cat(out)


def perplexity(model: nn.Module, windows: torch.Tensor, batch_size: int = 16) -> float:
    """``exp`` of the mean next-token NLL over every predicted token of ``windows``."""
    total = window_nll(model, windows, batch_size)
    tokens = windows.shape[0] * (windows.shape[1] - 1)
    return math.exp(float(total.sum()) / tokens)


def _windows(tokens: torch.Tensor, length: int, split: str) -> torch.Tensor:
    n = len(tokens) // length
    if n < 1:
        raise TaskError(
            f"`{split}` holds {len(tokens)} tokens, shorter than one window of context_length={length}; "
            "give more text or a shorter context_length"
        )
    return tokens[: n * length].view(n, length)


def _model_vocab(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    size = getattr(config, "vocab_size", None)
    if isinstance(size, int):
        return size
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    return int(head.out_features) if isinstance(head, nn.Linear) else None


def causal_lm_fields(
    model: nn.Module,
    *,
    train: TextOrTokens,
    val: TextOrTokens,
    test: TextOrTokens | None = None,
    tokenizer: Any = None,
    context_length: int | None = None,
    calibration_windows: int = 32,
    calibration_seed: int = 0,
    batch_size: int = 16,
    lr: float = 3e-4,
    example_batch: int = 4,
    seed: int = 0,
    name: str = "causal-lm",
    max_eval_windows: int | None = None,
) -> dict[str, Any]:
    """The fields of a perplexity task for a causal language model (see the module
    docstring): ``Task.for_causal_lm(model, **options)`` (``autoprune.lm.causal_lm_task``)
    is ``Task(**causal_lm_fields(model, **options))``.

    Args:
        model: a Hugging Face causal LM (``LlamaForCausalLM``, ``GPT2LMHeadModel``...) or any
            module mapping token ids ``(batch, tokens)`` to logits.
        train, val, test: token ids (a 1-D tensor, a list of ids, a list of documents' ids) or
            text (a string or a list of documents) with ``tokenizer``.
        tokenizer: a Hugging Face tokenizer or a callable ``text -> {"input_ids": [...]}``.
        context_length: window length in tokens; default the model's
            ``max_position_embeddings`` (capped at 2048).
        calibration_windows: windows drawn from ``train`` for Wanda and SparseGPT.
        calibration_seed: seed of those draws (and of fine-tuning's batches).
        lr: learning rate of ``fine_tune`` and ``distill_fine_tune`` (AdamW, 10% warm-up, cosine;
            3e-4 recovers a pruned model without disturbing a converged one). ``distill_fine_tune``
            adds KL to the unpruned model's logits (weight 0.5, temperature 1).
        max_eval_windows: score at most this many windows of each split (the first ones).

    Raises:
        TaskError: text without a tokenizer, a split shorter than one window, token ids the
            model's vocabulary does not hold, a model that returns no logits.
    """
    if context_length is None:
        limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        if not isinstance(limit, int):
            raise TaskError("pass context_length= (the model has no config.max_position_embeddings to take it from)")
        context_length = min(limit, 2048)
    if not isinstance(context_length, int) or isinstance(context_length, bool) or context_length < 2:
        raise TaskError(f"`context_length` must be an int >= 2, but got context_length={context_length!r}")
    if not isinstance(calibration_windows, int) or isinstance(calibration_windows, bool) or calibration_windows < 1:
        raise TaskError(f"`calibration_windows` must be an int >= 1, but got calibration_windows={calibration_windows!r}")
    streams = {"train": to_tokens(train, tokenizer, "train"), "val": to_tokens(val, tokenizer, "val")}
    if test is not None:
        streams["test"] = to_tokens(test, tokenizer, "test")
    vocab = _model_vocab(model)
    for split, tokens in streams.items():
        if len(tokens) and (int(tokens.min()) < 0 or (vocab is not None and int(tokens.max()) >= vocab)):
            raise TaskError(
                f"`{split}` holds token id {int(tokens.max())} but the model's vocabulary has {vocab} entries "
                "(ids 0..vocab-1): the tokenizer does not match the model"
            )
    windows = {split: _windows(tokens, context_length, split) for split, tokens in streams.items()}
    if max_eval_windows is not None:
        windows = {k: (v if k == "train" else v[:max_eval_windows]) for k, v in windows.items()}
    if len(streams["train"]) <= context_length:
        raise TaskError(
            f"`train` holds {len(streams['train'])} tokens; calibration needs more than context_length={context_length}"
        )
    generator = torch.Generator().manual_seed(calibration_seed)
    calibration = random_windows(streams["train"], calibration_windows, context_length, generator)
    example = {"input_ids": windows["val"][:example_batch].clone(), **_forward_kwargs(model)}
    model.eval()
    with torch.inference_mode():
        logits_of(model(input_ids=windows["val"][:1], **_forward_kwargs(model)))  # a model with no logits fails here
    train_tokens = streams["train"]

    def evaluate(m: nn.Module) -> float:
        return perplexity(m, windows["val"], batch_size)

    def test_fn(m: nn.Module) -> float:
        return perplexity(m, windows["test"], batch_size)

    def fine_tune(m: nn.Module, steps: int) -> None:
        if steps > 0:
            train_causal_lm(m, train_tokens, steps=steps, batch=batch_size, context=context_length, lr=lr,
                            seed=calibration_seed, warmup=max(1, steps // 10))  # fmt: skip

    teacher = copy.deepcopy(model).eval()  # the unpruned model, as it is now

    def distill_fine_tune(m: nn.Module, steps: int) -> None:
        if steps > 0:
            train_causal_lm(m, train_tokens, steps=steps, batch=batch_size, context=context_length, lr=lr,
                            seed=calibration_seed, warmup=max(1, steps // 10), teacher=teacher)  # fmt: skip

    return dict(
        name=name,
        model=model,
        example_inputs=example,
        evaluate=evaluate,
        fine_tune=fine_tune,
        distill_fine_tune=distill_fine_tune,
        metric_name="perplexity",
        test=test_fn if "test" in windows else None,
        output="logits",
        scale="percent",
        higher_is_better=False,
        calibration_inputs=[calibration[i : i + batch_size] for i in range(0, len(calibration), batch_size)],
        metric_notice=(
            f"perplexity over {len(windows['val'])} non-overlapping windows of {context_length} tokens, "
            "each scored alone (as the papers)"
        ),
    )
