"""The search space: a model's prunable groups turned into Optuna parameters.

Parameter names are layer paths (``features.0:amount``, ``features.0:method``) so that
Optuna's own tools (dashboard, importances) stay readable. With ``granularity = "block"``
layers sharing a path prefix are tied together; with ``"global"`` one amount and one
method apply everywhere. A fixed choice (a single value in the config) is not a parameter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import optuna

from autoprune.config import SpaceConfig
from autoprune.preflight import LayerInfo
from autoprune.schedule import LayerPlan, Schedule

__all__ = ["SearchSpace", "Unit"]


@dataclass(frozen=True)
class Unit:
    """Layers that share one amount and one method in the search."""

    key: str
    layers: tuple[LayerInfo, ...]
    methods: tuple[str, ...]
    max_amount: float


class SearchSpace:
    """Maps Optuna trials to Schedules for one model.

    Args:
        layers: the model's preflight (``autoprune.prunable_layers``).
        config: what may be searched and what is fixed.
    """

    def __init__(self, layers: list[LayerInfo], config: SpaceConfig) -> None:
        self.config = config
        ignore = set(config.ignore)
        usable = [info for info in layers if info.methods and info.name not in ignore]
        groups: dict[str, list[LayerInfo]] = {}
        for info in usable:
            groups.setdefault(self._unit_key(info.name), []).append(info)
        self.units: list[Unit] = []
        for key, members in groups.items():
            available = {m for info in members for m in info.methods} | {"none"}
            methods = tuple(m for m in config.methods if m in available)
            if not methods or methods == ("none",):
                continue
            cap = min(config.max_amount, max(info.max_amount for info in members))
            cap = math.floor(cap / config.amount_step + 1e-9) * config.amount_step
            self.units.append(Unit(key=key, layers=tuple(members), methods=methods, max_amount=round(cap, 6)))
        # Whole heads or head dims: a choice only where structured pruning can reach an
        # attention layer (otherwise it changes nothing and is not a parameter).
        reachable = any(
            info.heads > 0 and "structured" in info.methods and "structured" in unit.methods
            for unit in self.units
            for info in unit.layers
        )
        self._head_choices: list[bool] = list(config.attention_heads) if reachable else [False]

    def _unit_key(self, name: str) -> str:
        if self.config.granularity == "global":
            return "all"
        if self.config.granularity == "block":
            parts = name.split(".")
            depth = self.config.block_depth or max(1, len(parts) - 1)
            return ".".join(parts[:depth])
        return name

    @property
    def dimension(self) -> int:
        """Number of Optuna parameters a trial samples."""
        n = sum((len(u.methods) > 1) + 1 for u in self.units)
        c = self.config
        n += (c.steps[0] < c.steps[1]) + (len(c.shapes) > 1) + (len(c.fine_tune_steps) > 1)
        n += (len(c.importance) > 1) + (len(c.norms) > 1) + (len(c.global_unstructured) > 1)
        n += len(c.round_to_choices) > 1
        n += len(self._head_choices) > 1
        return n

    # ------------------------------------------------------------------ sampling
    def suggest(self, trial: optuna.trial.BaseTrial, *, seed: int = 0) -> Schedule:
        """Sample a Schedule from ``trial``."""
        c = self.config
        layers: dict[str, LayerPlan] = {}
        norm = _choice(trial, "norm", c.norms)
        for unit in self.units:
            method = _choice(trial, f"{unit.key}:method", list(unit.methods))
            amount = trial.suggest_float(f"{unit.key}:amount", 0.0, unit.max_amount, step=c.amount_step)
            amount = round(amount, 6)
            for info in unit.layers:
                if method == "none" or amount <= 0:
                    continue
                if method not in info.methods:
                    continue  # e.g. structured in a block that also holds the output layer
                limit = info.max_amount if method == "structured" else 0.99
                layers[info.name] = LayerPlan(method=method, amount=min(amount, limit), norm=norm)  # type: ignore[arg-type]
        if c.steps[0] < c.steps[1]:
            steps = trial.suggest_int("steps", c.steps[0], c.steps[1])
        else:
            steps = c.steps[0]
        return Schedule(
            layers=layers,
            steps=steps,
            shape=_choice(trial, "shape", c.shapes),
            fine_tune_steps=_choice(trial, "fine_tune_steps", c.fine_tune_steps),
            importance=_choice(trial, "importance", c.importance),
            global_unstructured=_choice(trial, "global_unstructured", c.global_unstructured),
            round_to=_round_to(_choice(trial, "round_to", c.round_to_choices)),
            attention_heads=_choice(trial, "attention_heads", self._head_choices),
            ignore=tuple(c.ignore),
            seed=seed,
        )

    # ------------------------------------------------------------------ references
    def uniform_schedule(self, amount: float, *, seed: int = 0) -> Schedule:
        """What a person does by hand: the same structured amount on every group, one shot."""
        c = self.config
        layers = {
            info.name: LayerPlan("structured", min(amount, info.max_amount), norm=c.norms[0])
            for unit in self.units
            for info in unit.layers
            if "structured" in info.methods
        }
        return Schedule(
            layers=layers,
            steps=1,
            shape="oneshot",
            fine_tune_steps=max(c.fine_tune_steps),
            importance=c.importance[0],
            round_to=_round_to(c.round_to_choices[0]),
            attention_heads=self._head_choices[0],
            ignore=tuple(c.ignore),
            seed=seed,
        )

    def uniform_params(self, amount: float) -> dict[str, Any]:
        """Parameter values of :meth:`uniform_schedule`, to enqueue as a warm start."""
        c = self.config
        params: dict[str, Any] = {}
        for unit in self.units:
            if len(unit.methods) > 1:
                params[f"{unit.key}:method"] = "structured" if "structured" in unit.methods else unit.methods[0]
            value = min(amount, unit.max_amount)
            params[f"{unit.key}:amount"] = round(round(value / c.amount_step) * c.amount_step, 6)
        if c.steps[0] < c.steps[1]:
            params["steps"] = c.steps[0]
        if len(c.shapes) > 1:
            params["shape"] = "oneshot" if "oneshot" in c.shapes else c.shapes[0]
        if len(c.fine_tune_steps) > 1:
            params["fine_tune_steps"] = max(c.fine_tune_steps)
        if len(c.importance) > 1:
            params["importance"] = c.importance[0]
        if len(c.norms) > 1:
            params["norm"] = c.norms[0]
        if len(c.global_unstructured) > 1:
            params["global_unstructured"] = False
        if len(c.round_to_choices) > 1:
            params["round_to"] = c.round_to_choices[0]
        if len(self._head_choices) > 1:
            params["attention_heads"] = self._head_choices[0]
        return params


def _round_to(value: int) -> int | None:
    return None if value == 1 else value


def _choice(trial: optuna.trial.BaseTrial, name: str, choices: list[Any]) -> Any:
    if len(choices) == 1:
        return choices[0]
    return trial.suggest_categorical(name, choices)
