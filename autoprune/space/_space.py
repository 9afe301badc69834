"""The search space proper: units -> Optuna parameters -> Schedule, and back (one sampling code
for a trial, a params dict and a Schedule; the package docstring has the rules)."""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import optuna

from autoprune._errors import ScheduleError
from autoprune.config import SpaceConfig
from autoprune.preflight import LayerInfo
from autoprune.schedule import LayerPlan, Schedule, Shape
from autoprune.space._answers import _Ask, _on_grid, _Prefer, _TrialAsk
from autoprune.space._units import Unit

if TYPE_CHECKING:
    from autoprune.sensitivity import Sensitivity

__all__ = ["SearchSpace"]

_UNSTRUCTURED_MAX = 0.99
_SPREAD_STEP = 0.25


class SearchSpace:
    """Maps Optuna trials to Schedules for one model.

    Args:
        layers: the model's preflight (``autoprune.prunable_layers``).
        config: what may be searched and what is fixed.
        sensitivity: a sensitivity scan of the same units
            (:func:`autoprune.sensitivity.scan_sensitivity`); needed by
            ``config.parametrization == "sensitivity"``.
    """

    def __init__(self, layers: list[LayerInfo], config: SpaceConfig, *, sensitivity: Sensitivity | None = None) -> None:
        self.config = config
        self.sensitivity = sensitivity
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
            if cap < config.amount_step - 1e-9:
                continue  # not even one step of pruning is safe
            self.units.append(Unit(key=key, layers=tuple(members), methods=methods, max_amount=round(cap, 6)))
        # Whole heads or head dims: a choice only where structured pruning can reach an
        # attention layer (otherwise it changes nothing and is not a parameter).
        reachable = any(
            info.heads > 0 and "structured" in info.methods and "structured" in unit.methods
            for unit in self.units
            for info in unit.layers
        )
        self._head_choices: list[bool] = list(config.attention_heads) if reachable else [False]
        # the sensitivity path and each step's estimated saving, computed once
        self._path: list[tuple[float, dict[str, float]]] | None = None
        if config.parametrization == "sensitivity":
            self._check_sensitivity()

    def _unit_key(self, name: str) -> str:
        if self.config.granularity == "global":
            return "all"
        if self.config.granularity == "block":
            parts = name.split(".")
            depth = self.config.block_depth or max(1, len(parts) - 1)
            return ".".join(parts[:depth])
        return name

    def _check_sensitivity(self) -> None:
        if self.sensitivity is None:
            raise ScheduleError(
                "space.parametrization = 'sensitivity' needs a sensitivity scan: "
                "SearchSpace(layers, config, sensitivity=scan_sensitivity(...))."
            )
        if "structured" not in self.config.methods:
            raise ScheduleError(
                f"space.parametrization = 'sensitivity' prunes structurally, but space.methods={self.config.methods!r}."
            )
        missing = [u.key for u in self.units if u.supports("structured") and self.sensitivity.curve(u.key) is None]
        if missing:
            raise ScheduleError(
                f"the sensitivity scan has no structured curve for unit(s) {missing}; scan this space's units "
                f"(granularity {self.config.granularity!r})."
            )

    @property
    def dimension(self) -> int:
        """The most Optuna parameters a trial samples (conditional ones included)."""
        c = self.config
        if c.parametrization == "sensitivity":
            n = 2 + (c.offset_range > 0) * len(self._structured_units())
        else:
            n = sum((len(u.methods) > 1) + 1 for u in self.units)
        iterative = [s for s in c.shapes if s != "oneshot"]
        can_iterate = c.steps[0] < c.steps[1] and max(c.fine_tune_steps) > 0 and bool(iterative)
        n += can_iterate + (len(iterative) > 1) + (len(c.fine_tune_steps) > 1)
        n += (len(c.importance) > 1) + (len(c.norms) > 1)
        n += len(c.global_unstructured) > 1 and c.parametrization == "unit"  # the other prunes structurally
        n += len(c.round_to_choices) > 1
        n += len(self._head_choices) > 1
        return n

    # ------------------------------------------------------------------ sampling
    def suggest(self, trial: optuna.trial.BaseTrial, *, seed: int = 0) -> Schedule:
        """Sample a Schedule from ``trial`` (an enqueued trial gets exactly its params' Schedule)."""
        return self._sample(_TrialAsk(trial), seed)

    def schedule_from_params(self, params: Mapping[str, Any], *, seed: int = 0) -> Schedule:
        """The Schedule that a trial with ``params`` samples.

        Raises:
            ScheduleError: a parameter that applies is missing, off its grid or not a choice,
                or ``params`` holds one that does not apply (so it would not describe the run).
        """
        ask = _Prefer(params, strict=True)
        schedule = self._sample(ask, seed)
        extra = sorted(set(params) - set(ask.params))
        if extra:
            raise ScheduleError(f"parameter(s) {extra} do not apply to this schedule of the search space; drop them.")
        return schedule

    def params_for(
        self,
        schedule_or_amounts: Schedule | Mapping[str, float],
        *,
        method: str = "structured",
        **options: Any,
    ) -> dict[str, Any]:
        """Trial parameters for ``study.enqueue_trial`` that make :meth:`suggest` run exactly
        :meth:`schedule_from_params` of them.

        Args:
            schedule_or_amounts: a Schedule of this space (raises ScheduleError if the space
                cannot express it exactly), or ``{unit key: amount}``: amounts are put on the
                space's grid and capped per unit; units left out (or at 0) are not pruned.
            method: with amounts, the method of every unit that supports it (others: none).
            **options: with amounts, the whole-schedule choices (``fine_tune_steps``,
                ``steps``, ``shape``, ``importance``, ``norm``, ``round_to``,
                ``attention_heads``, ``global_unstructured``). By default a reference:
                one step, the largest fine-tuning budget, the first of every other choice.

        Example:
            >>> import autoprune as ap
            >>> from autoprune.testing import models as zoo
            >>> model, x = zoo.get_model("cnn")
            >>> space = SearchSpace(ap.prunable_layers(model, x), ap.SpaceConfig(methods=["structured", "none"]))
            >>> params = space.params_for({"features.0.0": 0.5})
            >>> params["features.0.0:amount"], params["features.1.0:method"]
            (0.5, 'none')
            >>> space.schedule_from_params(params).layers
            {'features.0.0': LayerPlan(method='structured', amount=0.5, norm=1)}
        """
        if isinstance(schedule_or_amounts, Schedule):
            return self._params_of_schedule(schedule_or_amounts)
        amounts = dict(schedule_or_amounts)
        unknown = sorted(set(amounts) - {u.key for u in self.units})
        if unknown:
            raise ScheduleError(
                f"unit(s) {unknown} are not units of this search space; units: {[u.key for u in self.units][:8]}."
            )
        allowed = {"fine_tune_steps", "steps", "shape", "importance", "norm", "round_to", "attention_heads",
                   "global_unstructured"}  # fmt: skip
        bad = sorted(set(options) - allowed)
        if bad:
            raise ScheduleError(f"unknown option(s) {bad}; allowed: {sorted(allowed)}.")
        prefs = self._whole_schedule_prefs(options)
        if self.config.parametrization == "sensitivity":
            prefs.update(self._sensitivity_prefs(amounts))
        else:
            for unit in self.units:
                prefs.update(self._unit_prefs(unit, method, amounts.get(unit.key, 0.0)))
        ask = _Prefer(prefs, strict=False)
        self._sample(ask, 0)
        return ask.params

    def uniform_params(self, amount: float, *, method: str = "structured") -> dict[str, Any]:
        """Parameter values of :meth:`uniform_schedule`, to enqueue as a reference. Units
        that ``method`` cannot reach (the output layer for structured) say ``none``;
        ``amount=0`` is the unpruned model, with the smallest fine-tuning choice."""
        if amount <= 0:
            # nothing pruned: nothing fine-tuned either (the unpruned reference)
            return self.params_for({}, fine_tune_steps=min(self.config.fine_tune_steps))
        if method not in self.config.methods:
            method = next(m for m in self.config.methods if m != "none")
        return self.params_for({u.key: amount for u in self.units if u.supports(method)}, method=method)

    def uniform_schedule(self, amount: float, *, seed: int = 0, method: str = "structured") -> Schedule:
        """What a person does by hand: the same structured amount on every group, one shot,
        with the largest fine-tuning budget; exactly what :meth:`uniform_params` samples."""
        return self.schedule_from_params(self.uniform_params(amount, method=method), seed=seed)

    # ------------------------------------------------------------------ the one sampler
    def _sample(self, ask: _Ask, seed: int) -> Schedule:
        c = self.config
        if c.parametrization == "sensitivity":
            chosen = self._sample_sensitivity(ask)
        else:
            chosen = {}
            for unit in self.units:
                method = ask.categorical(f"{unit.key}:method", list(unit.methods))
                if method == "none":
                    continue
                low = c.amount_step if "none" in unit.methods else 0.0
                chosen[unit.key] = (method, ask.floating(f"{unit.key}:amount", low, unit.max_amount, c.amount_step))
        by_key = {u.key: u for u in self.units}
        plans: dict[str, tuple[str, float]] = {}
        for key, (method, amount) in chosen.items():
            for info in by_key[key].layers:
                if amount <= 0 or method not in info.methods:
                    continue  # e.g. structured in a block that also holds the output layer
                limit = info.max_amount if method == "structured" else _UNSTRUCTURED_MAX
                plans[info.name] = (method, min(amount, limit))
        structured = [name for name, (m, _) in plans.items() if m == "structured"]
        unstructured_weights = sum(
            len(info.weights)
            for u in self.units
            for info in u.layers
            if plans.get(info.name, ("",))[0] == "unstructured"
        )
        fine_tune_steps = ask.categorical("fine_tune_steps", list(c.fine_tune_steps))
        iterative = [s for s in c.shapes if s != "oneshot"]
        steps = c.steps[0]
        if c.steps[0] < c.steps[1] and fine_tune_steps > 0 and iterative:
            # several steps only with fine-tuning between them (else they prune as one)
            steps = ask.integer("steps", c.steps[0], c.steps[1])
        shape: Shape = ask.categorical("shape", iterative or list(c.shapes)) if steps > 1 else "oneshot"
        importance = ask.categorical("importance", list(c.importance)) if structured else c.importance[0]
        norm = ask.categorical("norm", list(c.norms)) if structured and importance != "random" else c.norms[0]
        round_to = ask.categorical("round_to", c.round_to_choices) if structured else c.round_to_choices[0]
        heads = any(info.heads > 0 and info.name in structured for u in self.units for info in u.layers)
        attention_heads = ask.categorical("attention_heads", self._head_choices) if heads else self._head_choices[0]
        distill = ask.categorical("distill", list(c.distill)) if fine_tune_steps > 0 else False
        global_choices = list(c.global_unstructured)
        global_unstructured = (
            ask.categorical("global_unstructured", global_choices) if unstructured_weights >= 2 else global_choices[0]
        )
        return Schedule(
            layers={name: LayerPlan(method=m, amount=a, norm=norm) for name, (m, a) in plans.items()},  # type: ignore[arg-type]
            steps=steps,
            shape=shape,
            # per trial: the budget is split evenly over the pruning steps (one fine-tune
            # budget per trial, whatever its steps); per step: each step gets all of it
            fine_tune_steps=fine_tune_steps // steps if c.fine_tune_per_trial else fine_tune_steps,
            importance=importance,
            global_unstructured=global_unstructured,
            round_to=None if round_to == 1 else round_to,
            attention_heads=attention_heads,
            distill=distill,
            ignore=tuple(c.ignore),
            seed=seed,
        )

    def _sample_sensitivity(self, ask: _Ask) -> dict[str, tuple[str, float]]:
        """``level`` (the uniform amount), ``spread`` (0: uniform, 1: the sensitivity
        allocation that saves the same MACs, in between: a blend) and a per-unit offset."""
        c = self.config
        level = ask.floating("level", 0.0, c.max_amount, c.amount_step)
        if level <= 0:
            return {}
        spread = ask.floating("spread", 0.0, 1.0, _SPREAD_STEP)
        base = self._blend(level, spread)
        r = round(math.floor(c.offset_range / c.amount_step + 1e-9) * c.amount_step, 6)
        chosen: dict[str, tuple[str, float]] = {}
        for unit in self._structured_units():
            amount = base[unit.key]
            if r > 0:
                amount += ask.floating(f"{unit.key}:offset", -r, r, c.amount_step)
            amount = _on_grid(min(max(amount, 0.0), unit.max_amount), c.amount_step)
            if amount > 0:
                chosen[unit.key] = ("structured", amount)
        return chosen

    def _structured_units(self) -> list[Unit]:
        return [u for u in self.units if u.supports("structured")]

    def _blend(self, level: float, spread: float) -> dict[str, float]:
        """Per-unit amounts (before offsets): ``(1 - spread)`` x uniform ``level`` plus
        ``spread`` x the allocation that saves the same MACs (by the scan's estimate)."""
        uniform = {u.key: min(level, u.max_amount) for u in self._structured_units()}
        if spread <= 0:
            return uniform
        assert self.sensitivity is not None
        allocated = self._allocation(self.sensitivity.saved_fraction(uniform))
        return {k: (1.0 - spread) * a + spread * allocated.get(k, 0.0) for k, a in uniform.items()}

    def _allocation(self, target: float) -> dict[str, float]:
        """The first allocation on the sensitivity path whose estimated saving
        reaches ``target`` (the path and its savings are computed once per space; the
        savings grow along the path, so a bisection finds it)."""
        sens = self.sensitivity
        assert sens is not None
        if self._path is None:
            caps = {u.key: u.max_amount for u in self._structured_units()}
            path = sens.greedy_path(resource=sens.path_resource, caps=caps, step=self.config.amount_step)
            self._path = [(sens.saved_fraction(amounts), amounts) for amounts in path]
        savings = [saved for saved, _ in self._path]
        i = bisect.bisect_left(savings, target - 1e-9)
        return self._path[min(i, len(self._path) - 1)][1]

    # ------------------------------------------------------------------ params of given schedules
    def _unit_prefs(self, unit: Unit, method: str, amount: float) -> dict[str, Any]:
        step = self.config.amount_step
        amount = _on_grid(min(max(float(amount), 0.0), unit.max_amount), step)
        if not unit.supports(method) or amount <= 0:
            if "none" in unit.methods:
                return {f"{unit.key}:method": "none"}
            return {f"{unit.key}:method": unit.methods[0], f"{unit.key}:amount": 0.0}
        return {f"{unit.key}:method": method, f"{unit.key}:amount": amount}

    def _sensitivity_prefs(self, amounts: Mapping[str, float]) -> dict[str, Any]:
        """The (level, spread, offsets) whose amounts come nearest to ``amounts``: uniform
        amounts are ``spread = 0`` with no offsets, an allocation of the scan ``spread = 1``."""
        c = self.config
        units = self._structured_units()
        wanted = {u.key: _on_grid(min(max(float(amounts.get(u.key, 0.0)), 0.0), u.max_amount), c.amount_step)
                  for u in units}  # fmt: skip
        if not any(wanted.values()):
            return {"level": 0.0}
        best: tuple[float, float, dict[str, Any]] | None = None
        n_levels = int(round(c.max_amount / c.amount_step + 1e-9))
        for spread in [i * _SPREAD_STEP for i in range(int(round(1 / _SPREAD_STEP)) + 1)]:
            for i in range(1, n_levels + 1):
                level = _on_grid(min(i * c.amount_step, c.max_amount), c.amount_step)
                base = self._blend(level, spread)
                offsets = {k: wanted[k] - base[k] for k in wanted}
                error = max(abs(v) for v in offsets.values())
                # ties: the smaller spread (uniform first), then the smaller level
                if best is None or error < best[0] - 1e-9:
                    prefs = {"level": level, "spread": spread, **{f"{k}:offset": v for k, v in offsets.items()}}
                    best = (error, spread, prefs)
        assert best is not None
        return best[2]

    def _whole_schedule_prefs(self, options: Mapping[str, Any]) -> dict[str, Any]:
        c = self.config
        prefs: dict[str, Any] = {"fine_tune_steps": max(c.fine_tune_steps), "steps": c.steps[0]}
        prefs.update(options)
        if prefs.get("round_to") is None:
            prefs["round_to"] = 1
        return prefs

    def _budget_choice(self, schedule: Schedule) -> int:
        """The ``fine_tune_steps`` choice that gives the schedule its per-step fine-tuning."""
        if not self.config.fine_tune_per_trial:
            return schedule.fine_tune_steps
        for choice in self.config.fine_tune_steps:
            if choice // schedule.steps == schedule.fine_tune_steps:
                return choice
        return schedule.fine_tune_steps * schedule.steps  # not in the space: params_for says so

    def unit_amounts(self, schedule: Schedule) -> dict[str, tuple[str, float]]:
        """``{unit key: (method, amount)}`` of the units ``schedule`` prunes (a unit's amount
        is the largest of its layers': a layer's own cap can hold it lower)."""
        active = schedule.active_layers()
        out: dict[str, tuple[str, float]] = {}
        for unit in self.units:
            plans = [active[i.name] for i in unit.layers if i.name in active]
            if plans:
                out[unit.key] = (plans[0].method, max(p.amount for p in plans))
        return out

    def neighbour_params(self, schedule: Schedule, amounts: Mapping[str, float]) -> dict[str, Any]:
        """Trial parameters of ``schedule`` with the structured amount of each unit in
        ``amounts`` replaced (put on the grid and capped; 0: the unit is not pruned), every
        other choice kept: a neighbour of it in this space (the local search). In the
        sensitivity parametrization the amounts become the nearest (level, spread, offsets).

        Raises:
            ScheduleError: a key of ``amounts`` is not a unit that can be pruned structurally.
        """
        bad = sorted(k for k in amounts if k not in {u.key for u in self._structured_units()})
        if bad:
            raise ScheduleError(f"unit(s) {bad} are not units of this space that can be pruned structurally.")
        chosen = self.unit_amounts(schedule)
        for key, amount in amounts.items():
            chosen[key] = ("structured", float(amount))
        return self._schedule_params(schedule, chosen, check=False)

    def _params_of_schedule(self, schedule: Schedule) -> dict[str, Any]:
        return self._schedule_params(schedule, self.unit_amounts(schedule), check=True)

    def _schedule_params(
        self, schedule: Schedule, chosen: Mapping[str, tuple[str, float]], *, check: bool
    ) -> dict[str, Any]:
        """The params of ``schedule``'s whole-schedule choices with the per-unit ``chosen``
        (method, amount); with ``check``, raises ScheduleError unless they rebuild it exactly."""
        amounts = {k: a for k, (_, a) in chosen.items()}
        norms = {p.norm for p in schedule.active_layers().values()}
        options = {
            "fine_tune_steps": self._budget_choice(schedule),
            "steps": schedule.steps,
            "shape": schedule.shape,
            "importance": schedule.importance,
            "norm": min(norms) if norms else self.config.norms[0],
            "round_to": schedule.round_to,
            "attention_heads": schedule.attention_heads,
            "global_unstructured": schedule.global_unstructured,
            "distill": schedule.distill,
        }
        prefs = self._whole_schedule_prefs(options)
        if self.config.parametrization == "sensitivity":
            prefs.update(self._sensitivity_prefs(amounts))
        else:
            for unit in self.units:
                method, amount = chosen.get(unit.key, ("none", 0.0))
                prefs.update(self._unit_prefs(unit, method, amount))
        ask = _Prefer(prefs, strict=False)
        rebuilt = self._sample(ask, schedule.seed)
        if check and rebuilt != schedule:
            diff = _first_difference(schedule, rebuilt)
            raise ScheduleError(f"the schedule is not in this search space: {diff}.")
        return ask.params


def _first_difference(wanted: Schedule, got: Schedule) -> str:
    a, b = wanted.to_dict(), got.to_dict()
    for key in a:
        if key == "layers":
            for name in sorted(set(a["layers"]) | set(b["layers"])):
                if a["layers"].get(name) != b["layers"].get(name):
                    return f"layer {name!r} is {a['layers'].get(name)}, the space gives {b['layers'].get(name)}"
        elif a[key] != b[key]:
            return f"{key}={a[key]!r}, the space gives {key}={b[key]!r}"
    return "they differ"
