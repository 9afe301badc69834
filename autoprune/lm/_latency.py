"""Latency as a language model is used: two regimes, each a paired speedup against the dense
model (the candidate and the dense model timed in alternation, median of per-round ratios
with its 95% interval; :class:`autoprune.evaluation.SpeedupMeter`).

- **prefill**: one forward pass over a batch of full windows (the task's example inputs:
  4 validation windows), no cache; what scoring a prompt or a document costs.
- **decode**: one sequence, ``new_tokens`` tokens generated greedily after a ``prompt``-token
  prompt, each step one token with the model's KV cache; what a chat reply costs, where the
  per-token work of every block (and not the matrix sizes alone) sets the time.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from autoprune.evaluation import Speedup, SpeedupMeter
from autoprune.tasks import Task

__all__ = ["REGIMES", "Decode", "lm_speedups", "regime_inputs"]

REGIMES = ("prefill", "decode")


class Decode(nn.Module):
    """Greedy generation with the KV cache, as a module: ``forward(input_ids)`` runs the prompt
    once, then ``new_tokens - 1`` single-token steps, and returns the generated ids."""

    def __init__(self, model: nn.Module, new_tokens: int = 32) -> None:
        super().__init__()
        if not isinstance(new_tokens, int) or new_tokens < 1:
            raise ValueError(f"`new_tokens` must be an int >= 1, but got new_tokens={new_tokens!r}")
        self.model = model
        self.new_tokens = new_tokens
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)  # type: ignore[arg-type]
        kwargs = {self._cache_arg: cache, "use_cache": True}
        logits = self.model(input_ids=input_ids, **kwargs).logits
        tokens = [logits[:, -1:].argmax(-1)]
        for _ in range(self.new_tokens - 1):
            logits = self.model(input_ids=tokens[-1], **kwargs).logits
            tokens.append(logits[:, -1:].argmax(-1))
        return torch.cat(tokens, dim=1)


def regime_inputs(task: Task, regime: str, prompt: int = 32) -> Any:
    """What each regime feeds the model: the task's example batch (prefill) or the first
    ``prompt`` tokens of its first example window (decode)."""
    if regime == "prefill":
        return task.example_inputs
    if regime == "decode":
        ids = task.example_inputs["input_ids"] if isinstance(task.example_inputs, dict) else task.example_inputs
        return {"input_ids": ids[:1, :prompt].clone()}
    raise ValueError(f"`regime` must be one of {', '.join(REGIMES)}, but got regime={regime!r}")


class RegimeMeters:
    """A :class:`SpeedupMeter` per regime, the dense model prepared once for each."""

    def __init__(
        self,
        task: Task,
        regimes: Sequence[str] = REGIMES,
        target: str = "cpu:threads=1",
        *,
        prompt: int = 32,
        new_tokens: int = 32,
    ) -> None:
        bad = [r for r in regimes if r not in REGIMES]
        if bad or not regimes:
            raise ValueError(f"latency regimes must be among {', '.join(REGIMES)}, but got {list(regimes)!r}")
        self.new_tokens = new_tokens
        self.meters: dict[str, SpeedupMeter] = {}
        for regime in regimes:
            reference = Decode(task.model, new_tokens) if regime == "decode" else task.model
            self.meters[regime] = SpeedupMeter(reference, regime_inputs(task, regime, prompt), target)

    def measure(self, model: nn.Module, budget_s: float = 2.0) -> dict[str, Speedup]:
        out = {}
        for regime, meter in self.meters.items():
            candidate = Decode(model, self.new_tokens) if regime == "decode" else model
            out[regime] = meter.measure(candidate, budget_s=budget_s)
        return out


def lm_speedups(
    model: nn.Module,
    task: Task,
    *,
    regimes: Sequence[str] = REGIMES,
    target: str = "cpu:threads=1",
    budget_s: float = 2.0,
    prompt: int = 32,
    new_tokens: int = 32,
) -> dict[str, Speedup]:
    """Speedups of ``model`` over the task's dense model in each regime (see the module docs).

    Example:
        >>> import autoprune as ap
        >>> from autoprune.testing.lm import tiny
        >>> task = tiny()
        >>> s = ap.lm.lm_speedups(task.model, task, budget_s=0.3, new_tokens=4)
        >>> sorted(s)
        ['decode', 'prefill']
    """
    meters = RegimeMeters(task, regimes, target, prompt=prompt, new_tokens=new_tokens)
    return meters.measure(model, budget_s)
