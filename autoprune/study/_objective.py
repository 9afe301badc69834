"""One trial: the SearchSpace turns it into a Schedule, the executor prunes a copy of the
task's model (fine-tuning between steps), the evaluator measures it, and the trial records
the Schedule, every metric and how long each part took.

Each step is a method of :class:`Objective` (``schedule``, ``prune``, ``measure``,
``record``), so a later stage is one more method. Constraints go through Optuna
(``trial.set_constraint``) so infeasible trials never enter the Pareto front.
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import optuna
from torch import nn

from autoprune._errors import AutopruneError
from autoprune._lock import MachineLock
from autoprune.config import SearchConfig
from autoprune.evaluation import LatencyCache, Target, derived_metrics, evaluate
from autoprune.executor import apply_schedule
from autoprune.preflight import LayerInfo, prunable_layers
from autoprune.schedule import Schedule
from autoprune.space import SearchSpace
from autoprune.study._references import DUPLICATE, publish_references, wait_for_baseline
from autoprune.study._storage import first_line, latency_cache_path
from autoprune.study.keys import OBJECTIVES, ROLE_SEARCH, ROLE_UNIFORM, ROLE_UNPRUNED
from autoprune.tasks import Task

__all__ = ["Objective", "SearchSetup"]


@dataclass(frozen=True)
class SearchSetup:
    """What every trial of one process shares, built once per process: the task, the
    config, the preflight's layers and the SearchSpace over them."""

    task: Task
    cfg: SearchConfig
    layers: list[LayerInfo]
    space: SearchSpace

    @classmethod
    def build(cls, task: Task, cfg: SearchConfig, lock: MachineLock) -> SearchSetup:
        """Run the preflight (a trace of the model: busy work, like training) once."""
        with lock.busy():
            layers = prunable_layers(task.model, task.example_inputs)
        return cls(task, cfg, layers, SearchSpace(layers, cfg.space))


class _EarlyReject(Exception):
    def __init__(self, accuracy: float, step: int) -> None:
        super().__init__(f"accuracy {accuracy:.3f} after step {step} is past the constraint")
        self.accuracy = accuracy
        self.step = step


class Objective:
    """The function Optuna optimises: one trial, start to end, in this process.

    While a trial computes (pruning, fine-tuning, accuracy, MACs) this process holds the
    machine lock busy; only its own latency measurement lets go (see :mod:`autoprune._lock`).
    """

    def __init__(self, setup: SearchSetup, baseline: dict[str, Any] | None, lock: MachineLock) -> None:
        self.setup = setup
        self.cfg = setup.cfg
        self.task = setup.task
        self.lock = lock
        self.baseline = baseline
        target = Target.parse(self.cfg.target)
        if target.threads is None and target.device == "cpu":
            target = replace(target, threads=os.cpu_count() or 1)
        self.target = target
        cache_path = latency_cache_path(self.cfg)
        self.cache = LatencyCache(cache_path) if cache_path is not None else None
        self.host = socket.gethostname()

    def __call__(self, trial: optuna.Trial) -> tuple[float, ...]:
        role = trial.user_attrs.get("role", ROLE_SEARCH)
        try:
            if role != ROLE_UNPRUNED and self.baseline is None:
                # Never wait for another worker while busy: its measurement of the unpruned
                # model would wait for us in turn.
                self.baseline = wait_for_baseline(trial.study)
            with self.lock.busy():
                return self._run(trial, role)
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            trial.set_user_attr("error", "interrupted by the user")
            raise
        except Exception as exc:
            trial.set_user_attr("error", f"{type(exc).__name__}: {first_line(exc)}")
            raise

    def _run(self, trial: optuna.Trial, role: str) -> tuple[float, ...]:
        if role == ROLE_UNPRUNED:
            self._refuse_duplicate(trial)
        schedule = self.schedule(trial, role)
        pruned, early = self.prune(trial, role, schedule)
        if early is not None:
            return self._record_early_reject(trial, early)
        assert pruned is not None
        metrics = self.measure(trial, pruned)
        values = self.record(trial, metrics)
        if role == ROLE_UNPRUNED:
            self.baseline = dict(metrics)
            publish_references(trial.study, self.setup, metrics, trial.number)
        return values

    # ------------------------------------------------------------------ the steps
    def _refuse_duplicate(self, trial: optuna.Trial) -> None:
        if "baseline" not in trial.study.user_attrs:
            return
        # A second unpruned trial: a heartbeat retry of one whose worker died after
        # publishing, or two workers resuming a failed baseline at once. Measuring again
        # would only publish the references twice.
        first = trial.study.user_attrs.get("baseline_trial")
        raise AutopruneError(
            f"{DUPLICATE}: the unpruned model was already measured"
            + (f" in trial {first}" if first is not None else "")
            + "; this copy is not evaluated"
        )

    def schedule(self, trial: optuna.Trial, role: str) -> Schedule:
        """The trial's Schedule (the sampler's, or a reference's), recorded on the trial."""
        seed = self.cfg.seed
        space = self.setup.space
        if role == ROLE_UNPRUNED:
            schedule = Schedule(seed=seed)
            space.suggest(trial, seed=seed)  # records the (all-zero) params for the sampler
        elif role == ROLE_UNIFORM:
            space.suggest(trial, seed=seed)
            schedule = space.uniform_schedule(float(trial.user_attrs["uniform_amount"]), seed=seed)
        else:
            schedule = space.suggest(trial, seed=seed)
        trial.set_user_attr("role", role)
        trial.set_user_attr("schedule", schedule.to_json())
        trial.set_user_attr("schedule_summary", schedule.summary())
        trial.set_user_attr("host", self.host)
        return schedule

    def prune(self, trial: optuna.Trial, role: str, schedule: Schedule) -> tuple[nn.Module | None, _EarlyReject | None]:
        """A pruned, fine-tuned copy of the task's model, or why it was rejected early."""
        timings = {"finetune": 0.0, "early_eval": 0.0}
        fine_tune = self._timed_fine_tune(timings)
        on_step = self._early_check(timings) if role == ROLE_SEARCH else None
        t0 = time.perf_counter()
        early: _EarlyReject | None = None
        pruned: nn.Module | None = None
        try:
            pruned = apply_schedule(
                self.task.model, schedule, example_inputs=self.task.example_inputs, fine_tune=fine_tune, on_step=on_step
            )
        except _EarlyReject as exc:
            early = exc
        total = time.perf_counter() - t0
        trial.set_user_attr("time_prune_s", round(total - timings["finetune"] - timings["early_eval"], 4))
        trial.set_user_attr("time_finetune_s", round(timings["finetune"], 4))
        trial.set_user_attr("early_rejected", early is not None)
        return pruned, early

    def measure(self, trial: optuna.Trial, pruned: nn.Module) -> dict[str, Any]:
        """Every metric of the pruned model (accuracy and MACs are busy work; the latency
        measurement takes the machine lock exclusively)."""
        metrics = evaluate(
            pruned, self.task, target=self.target, cache=self.cache, time_budget_s=self.cfg.latency_budget_s
        ).as_dict()
        if not math.isfinite(metrics["accuracy"]):
            raise FloatingPointError(f"accuracy is {metrics['accuracy']} (NaN/inf weights after fine-tuning?)")
        trial.set_user_attr("time_eval_s", round(float(metrics.get("time_eval_s", 0.0)), 4))
        trial.set_user_attr("time_latency_s", round(float(metrics.get("time_latency_s", 0.0)), 4))
        return metrics

    def record(self, trial: optuna.Trial, metrics: dict[str, Any]) -> tuple[float, ...]:
        """Store the metrics and the derived ones, set the constraints; the objective values."""
        derived = derived_metrics(metrics, self.baseline or metrics)
        for key, value in {**metrics, **derived}.items():
            trial.set_user_attr(key, value)
        feasible = True
        limits = {
            "accuracy_drop": ("max_accuracy_drop", derived["accuracy_drop"]),
            "latency_ms": ("max_latency_ms", float(metrics["latency_ms"])),
            "size_bytes": ("max_size_bytes", float(metrics["sparse_bytes"])),
        }
        for name, (key, value) in limits.items():
            if key in self.cfg.constraints:
                excess = value - float(self.cfg.constraints[key])
                trial.set_constraint(name, excess)
                feasible = feasible and excess <= 0
        trial.set_user_attr("feasible", feasible)
        return tuple(float(metrics[OBJECTIVES[o][0]]) for o in self.cfg.objectives)

    # ------------------------------------------------------------------ helpers of prune
    def _timed_fine_tune(self, timings: dict[str, float]) -> Callable[[nn.Module, int], None] | None:
        if self.task.fine_tune is None:
            return None
        fine_tune = self.task.fine_tune

        def run(model: nn.Module, steps: int) -> None:
            t = time.perf_counter()
            fine_tune(model, steps)
            timings["finetune"] += time.perf_counter() - t

        return run

    def _early_check(self, timings: dict[str, float]) -> Callable[[nn.Module, int, int], None] | None:
        max_drop = self.cfg.constraints.get("max_accuracy_drop")
        if max_drop is None or self.baseline is None:
            return None
        limit = float(max_drop) + self.cfg.early_reject_margin
        base = float(self.baseline["accuracy"])

        def check(model: nn.Module, step: int, steps: int) -> None:
            if step >= steps:
                return  # the final step is measured in full anyway
            t = time.perf_counter()
            acc = float(self.task.evaluate(model))
            timings["early_eval"] += time.perf_counter() - t
            if base - acc > limit:
                raise _EarlyReject(acc, step)

        return check

    def _record_early_reject(self, trial: optuna.Trial, early: _EarlyReject) -> tuple[float, ...]:
        assert self.baseline is not None
        # Not worth measuring: it is infeasible. Size and speed get no credit (baseline values).
        metrics = dict(self.baseline)
        metrics.update(accuracy=early.accuracy, latency_cached=True, time_eval_s=0.0, time_latency_s=0.0)
        trial.set_user_attr("early_rejected_step", early.step)
        trial.set_user_attr("time_eval_s", 0.0)
        trial.set_user_attr("time_latency_s", 0.0)
        return self.record(trial, metrics)
