"""The allocation search for language models: per-unit sparsity under a global budget,
searched by Optuna, with uniform and OWL allocations as reference trials and EvoPress's
level switch as the local search.

What every trial shares is computed once (:class:`AllocationContext`): the calibration
statistics of the unpruned model, and for each linear layer the ranking of its weights by
the criterion, so an allocation's masks are a slice of that ranking. A trial then costs one
copy of the weights and one validation pass. Its Schedule (per-layer amounts, the criterion)
re-applied with ``apply_schedule(..., calibration=task.calibration_inputs)`` gives the same
weights (a test checks it).

The sampler sees validation perplexity only; test perplexity is recorded for the user.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
import torch
from torch import nn

from autoprune._errors import ConfigError
from autoprune._paths import sqlite_folder_made
from autoprune._stored import UNPRUNED, unpruned_metrics
from autoprune.evaluation import measure_speedup, size_stats, tensor_bytes
from autoprune.executor import apply_schedule
from autoprune.lm._allocation import (
    allocation_units,
    level_switch,
    owl_allocation,
    project_to_budget,
    total_sparsity,
    uniform_allocation,
    unit_sizes,
)
from autoprune.oneshot import collect_input_stats, prunable_linears, scores, sparse_bytes, weight_matrix
from autoprune.schedule import LayerPlan, Schedule
from autoprune.tasks import Task

__all__ = ["AllocationContext", "search_allocation", "ROLE_OWL", "LM_CRITERIA"]

_logger = logging.getLogger(__name__)
ROLE_UNIFORM = "uniform"
ROLE_OWL = "owl"
ROLE_SEARCH = "search"
ROLE_UNPRUNED = "unpruned"
LM_CRITERIA = ("magnitude", "wanda", "sparsegpt")


@dataclass
class AllocationContext:
    """What an allocation search shares between trials (built once per task and criterion)."""

    task: Task
    criterion: str = "wanda"
    granularity: str = "block"
    units: dict[str, list[str]] = field(init=False)
    sizes: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        if self.criterion not in LM_CRITERIA:
            raise ConfigError(f"`criterion` must be one of {LM_CRITERIA}, but got criterion={self.criterion!r}")
        if self.criterion != "magnitude" and not self.task.calibration_inputs:
            raise ConfigError(f"criterion {self.criterion!r} needs a task with calibration_inputs (Task.for_causal_lm)")
        model = self.task.model
        self.units = allocation_units(model, self.granularity)
        self.sizes = unit_sizes(model, self.units)
        self.linears = prunable_linears(model)
        self.dense = {n: weight_matrix(m).detach().clone() for n, m in self.linears.items()}
        self.stats = collect_input_stats(model, self.linears, self.task.calibration_inputs or [])
        self._order: dict[str, torch.Tensor] = {}
        self._work: nn.Module | None = None

    def schedule(self, amounts: dict[str, float], seed: int = 0) -> Schedule:
        """The Schedule of a unit allocation: every linear of a unit at the unit's amount."""
        layers = {n: LayerPlan("unstructured", a) for u, a in amounts.items() for n in self.units[u] if a > 0}
        return Schedule(layers=layers, criterion=self.criterion, seed=seed)

    def _rank(self, name: str) -> torch.Tensor:
        if name not in self._order:
            score = scores("magnitude" if self.criterion == "magnitude" else "wanda", self.dense[name], self.stats[name])
            # Wanda compares within each output row; magnitude across the layer
            self._order[name] = (
                score.reshape(-1).argsort(stable=True) if self.criterion == "magnitude" else score.argsort(dim=1, stable=True)
            )
        return self._order[name]

    def pruned(self, amounts: dict[str, float], seed: int = 0) -> nn.Module:
        """The model pruned by the allocation: from the shared rankings (magnitude, Wanda), or
        by applying the schedule (SparseGPT updates weights sequentially, nothing to share)."""
        if self.criterion == "sparsegpt":
            return apply_schedule(self.task.model, self.schedule(amounts, seed), example_inputs=None,
                                  calibration=self.task.calibration_inputs)  # fmt: skip
        if self._work is None:
            self._work = copy.deepcopy(self.task.model)
        work = self._work
        with torch.no_grad():
            for unit, amount in amounts.items():
                for name in self.units[unit]:
                    dense = self.dense[name]
                    keep = torch.ones_like(dense, dtype=torch.bool)
                    order = self._rank(name)
                    if self.criterion == "magnitude":
                        k = round(amount * dense.numel())
                        keep.view(-1)[order[:k]] = False
                    else:
                        k = round(amount * dense.shape[1])
                        keep.scatter_(1, order[:, :k], False)
                    weight_matrix(work.get_submodule(name)).copy_(dense * keep)
        return work


def _bytes(model: nn.Module, schedule: Schedule) -> int:
    """Sparse bytes of the model (N:M layers as kept values plus index metadata)."""
    total = int(size_stats(model)["sparse_bytes"])
    for name, plan in schedule.layers.items():
        if plan.pattern is None:
            continue
        weight = weight_matrix(model.get_submodule(name))
        total += sparse_bytes(weight.numel(), int((weight == 0).sum()), plan.pattern) - tensor_bytes(weight)[1]
    return total


def search_allocation(
    task: Task,
    *,
    sparsity: float | Sequence[float] = 0.5,
    criterion: str = "wanda",
    granularity: str = "block",
    n_trials: int = 100,
    timeout_s: float | None = None,
    seed: int = 0,
    spread: float = 0.2,
    local_share: float = 0.5,
    storage: str | optuna.storages.BaseStorage | None = None,
    study_name: str | None = None,
    max_metric_increase: float | None = None,
    measure_latency: bool = True,
    target: str = "cpu",
    context: AllocationContext | None = None,
    progress: Any = None,
    record_test: bool = True,
) -> optuna.Study:
    """Search per-unit sparsities of ``task``'s model at one or several global budgets.

    Args:
        sparsity: the share of the linear layers' weights pruned (total within +-0.5%); a
            list makes the level a search dimension and model size a second objective.
        criterion: ``magnitude``, ``wanda`` (default) or ``sparsegpt``.
        granularity: ``block`` (one amount per decoder block, as OWL) or ``layer``.
        n_trials: trials including the references (uniform and OWL at every level).
        timeout_s: stop starting trials after this many seconds.
        spread: how far a unit's amount may sit from the level before the budget projection.
        local_share: share of the trials after the references that are EvoPress level
            switches of the best trial so far (same level), the rest TPE's.
        max_metric_increase: constraint on the relative perplexity increase (0.10: +10%).
        record_test: score every trial on the task's test split too (for the user; the
            sampler never sees it). A benchmark that re-scores its chosen point turns it off.
        measure_latency: time each reference and the best trial of each level against the
            unpruned model in alternation (unstructured sparsity runs at dense cost on a CPU;
            the measured speedup says so).
    """
    levels = [float(sparsity)] if isinstance(sparsity, (int, float)) else [float(s) for s in sparsity]
    if not levels or any(not 0 < s < 0.95 for s in levels):
        raise ConfigError(f"`sparsity` must be in (0, 0.95) (or a non-empty list of such), but got sparsity={sparsity!r}")
    if task.higher_is_better:
        raise ConfigError(f"the allocation search needs a perplexity task (Task.for_causal_lm); {task.name!r} is not one")
    if not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1:
        raise ConfigError(f"`n_trials` must be an int >= 1, but got n_trials={n_trials!r}")
    sqlite_folder_made(storage)
    ctx = context or AllocationContext(task, criterion, granularity)
    multi = len(levels) > 1
    study = optuna.create_study(
        storage=storage,
        study_name=study_name,
        directions=["minimize", "minimize"] if multi else ["minimize"],
        sampler=optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=min(10, n_trials)),
        load_if_exists=True,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["perplexity", "size"] if multi else ["perplexity"])
    study.set_user_attr("objectives", ["perplexity", "size"] if multi else ["perplexity"])
    _store_setup(study, task, ctx, levels, max_metric_increase)
    unpruned = _unpruned(study, task)
    rng = random.Random(seed)
    units = list(ctx.units)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not any(t.user_attrs.get("role") in (ROLE_UNIFORM, ROLE_OWL) for t in study.trials):
        for level in levels:
            study.enqueue_trial(_params(uniform_allocation(ctx.units, level), level, multi),
                                user_attrs={"role": ROLE_UNIFORM, "uniform_amount": level})  # fmt: skip
            owl = owl_allocation(task.model, ctx.stats, ctx.units, level)
            study.enqueue_trial(_params(owl, level, multi), user_attrs={"role": ROLE_OWL, "owl_level": level},
                                skip_if_exists=True)  # fmt: skip
    start = time.perf_counter()
    timed: set[float] = {float(t.user_attrs.get("level", -1)) for t in done if "speedup" in t.user_attrs}
    while len(study.trials) < n_trials:
        if timeout_s is not None and time.perf_counter() - start > timeout_s:
            break
        waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
        if not waiting and rng.random() < local_share:
            _enqueue_switch(study, ctx, rng, multi, spread)
        trial = study.ask()
        role = trial.user_attrs.get("role", ROLE_SEARCH)
        try:
            level = float(trial.suggest_categorical("level", levels)) if multi else levels[0]
            raw = {u: trial.suggest_float(u, max(0.0, level - spread), min(0.95, level + spread)) for u in units}
            amounts = project_to_budget(raw, ctx.sizes, level)
            values = _evaluate(trial, ctx, task, amounts, level, unpruned, max_metric_increase, seed, role, record_test)
            if measure_latency and role == ROLE_UNIFORM and level not in timed:  # each level's uniform reference
                _time(trial, ctx, task, amounts, target, seed)
                timed.add(level)
            study.tell(trial, values if multi else values[0])
        except Exception as exc:  # a failing trial is recorded with its reason; the search goes on
            trial.set_user_attr("error", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            _logger.warning("trial %d failed: %s", trial.number, exc)
        if progress is not None:
            progress(study.trials[trial.number])  # the trial just told (enqueued ones may follow it)
    if measure_latency:
        _time_best(study, ctx, task, levels, target, seed)
    return study


def _params(amounts: dict[str, float], level: float, multi: bool) -> dict[str, Any]:
    return {**({"level": level} if multi else {}), **amounts}


def _store_setup(study: optuna.Study, task: Task, ctx: AllocationContext, levels: list[float], limit: float | None) -> None:
    config = {"kind": "allocation", "criterion": ctx.criterion, "granularity": ctx.granularity, "levels": levels,
              "max_metric_increase": limit}  # fmt: skip
    old = study.user_attrs.get("config")
    if old is not None and {k: old.get(k) for k in ("criterion", "granularity", "levels")} != {
        k: config[k] for k in ("criterion", "granularity", "levels")
    }:
        changed = next(k for k in ("criterion", "granularity", "levels") if old.get(k) != config[k])
        raise ConfigError(
            f"study {study.study_name!r} was searched with {changed}={old.get(changed)!r}; this run asks "
            f"{changed}={config[changed]!r}: use another study name"
        )
    study.set_user_attr("config", config)
    study.set_user_attr("task", task.spec or {"name": task.name})
    study.set_user_attr("metric", {"name": task.metric_name, "higher_is_better": False, "notice": task.metric_notice})
    study.set_user_attr("units", ctx.units)


def _unpruned(study: optuna.Study, task: Task) -> dict[str, Any]:
    stored = unpruned_metrics(study) or None
    if stored is not None:
        return dict(stored)
    with torch.inference_mode():
        base = {"perplexity": float(task.evaluate(task.model)), "sparse_bytes": int(size_stats(task.model)["sparse_bytes"])}
        if task.test is not None:
            base["test_perplexity"] = float(task.test(task.model))
    study.set_user_attr(UNPRUNED, base)
    return base


def _evaluate(
    trial: optuna.Trial,
    ctx: AllocationContext,
    task: Task,
    amounts: dict[str, float],
    level: float,
    unpruned: dict[str, Any],
    limit: float | None,
    seed: int,
    role: str,
    record_test: bool = True,
) -> tuple[float, float]:
    schedule = ctx.schedule(amounts, seed)
    t0 = time.perf_counter()
    model = ctx.pruned(amounts, seed)
    t1 = time.perf_counter()
    ppl = float(task.evaluate(model))
    if not math.isfinite(ppl):
        raise FloatingPointError(f"validation perplexity is {ppl}")
    t2 = time.perf_counter()
    size = _bytes(model, schedule)
    attrs: dict[str, Any] = {
        "role": role,
        "level": level,
        "schedule": schedule.to_json(),
        "schedule_summary": schedule.summary(),
        "amounts": amounts,
        "sparsity": round(total_sparsity(amounts, ctx.sizes), 6),
        "perplexity": ppl,
        "perplexity_increase": ppl / unpruned["perplexity"] - 1.0,
        "sparse_bytes": size,
        "compression": unpruned["sparse_bytes"] / size,
        "time_prune_s": round(t1 - t0, 4),
        "time_eval_s": round(t2 - t1, 4),
        "fidelity": "full",
        "fine_tune_steps_spent": 0,
    }
    if task.test is not None and record_test:
        test = float(task.test(model))  # recorded for the user; the sampler never sees it
        attrs["test_perplexity"] = test
        attrs["test_perplexity_increase"] = test / unpruned["test_perplexity"] - 1.0
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    feasible = True
    if limit is not None:
        excess = attrs["perplexity_increase"] - limit
        trial.set_constraint("metric_increase", excess)
        feasible = excess <= 0
    trial.set_user_attr("feasible", feasible)
    return ppl, float(size)


def _time(trial: Any, ctx: AllocationContext, task: Task, amounts: dict[str, float], target: str, seed: int) -> None:
    model = copy.deepcopy(ctx.pruned(amounts, seed))
    s = measure_speedup(model, task.model, task.example_inputs, target=target, budget_s=2.0)
    for key, value in {"speedup": s.ratio, "speedup_low": s.low, "speedup_high": s.high}.items():
        trial.set_user_attr(key, float(value))


def _time_best(study: optuna.Study, ctx: AllocationContext, task: Task, levels: list[float], target: str, seed: int) -> None:
    """The best trial of each level, timed against the unpruned model in alternation; kept in
    the study's ``speedups`` (trial number -> ratio and interval): a finished trial's
    attributes are not written again."""
    speedups = dict(study.user_attrs.get("speedups", {}))
    for level in levels:
        best = _best(study, level)
        if best is None or "speedup" in best.user_attrs or str(best.number) in speedups:
            continue
        model = copy.deepcopy(ctx.pruned(best.user_attrs["amounts"], seed))
        s = measure_speedup(model, task.model, task.example_inputs, target=target, budget_s=2.0)
        speedups[str(best.number)] = {"speedup": s.ratio, "speedup_low": s.low, "speedup_high": s.high}
    study.set_user_attr("speedups", speedups)


def _best(study: optuna.Study, level: float) -> optuna.trial.FrozenTrial | None:
    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if t.user_attrs.get("level") == level and t.user_attrs.get("feasible", True)
    ]
    return min(done, key=lambda t: (t.user_attrs["perplexity"], t.number)) if done else None


def _enqueue_switch(study: optuna.Study, ctx: AllocationContext, rng: random.Random, multi: bool, spread: float) -> None:
    """A level switch of the best trial of a random level (EvoPress's mutation), when the
    references have run."""
    levels = study.user_attrs["config"]["levels"]
    level = rng.choice(levels)
    best = _best(study, level)
    if best is None:
        return
    step = 0.02
    for _ in range(10):
        moved = level_switch(best.user_attrs["amounts"], ctx.sizes, step, rng)
        if moved is None:
            return
        if all(abs(a - level) <= spread for a in moved.values()):
            study.enqueue_trial(_params(moved, level, multi), user_attrs={"neighbour_of": best.number})
            return
