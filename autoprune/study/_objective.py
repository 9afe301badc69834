"""One trial: the SearchSpace turns it into a Schedule, the executor prunes a copy of the
task's model (fine-tuning between steps), the evaluator measures it, and the trial records
the Schedule, every metric and how long each part took.

Each step is a method of :class:`Objective` (``schedule``, ``prune``, ``measure``,
``record``), so a later stage is one more method. Constraints go through Optuna
(``trial.set_constraint``) so infeasible trials never enter the Pareto front.
"""

from __future__ import annotations

import logging
import math
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import optuna
import torch
from torch import nn

from autoprune._errors import AutopruneError
from autoprune._lock import MachineLock
from autoprune._stored import unpruned_metrics, unpruned_trial_number
from autoprune.evaluation import (
    LatencyCache,
    Speedup,
    SpeedupMeter,
    cached_speedup,
    derived_metrics,
    drop_standard_error,
    evaluate,
    sample_mean,
    speedup_key,
)
from autoprune.executor import apply_schedule
from autoprune.schedule import Schedule
from autoprune.sensitivity import screen
from autoprune.study._references import publish_references
from autoprune.study._screening import Screening, screening_pays
from autoprune.study._setup import SearchSetup, paying_space, study_target
from autoprune.study._storage import first_line, latency_cache_path
from autoprune.study._unpruned import DUPLICATE, wait_for_unpruned
from autoprune.study.keys import (
    FIDELITY_FULL,
    FIDELITY_REPEAT,
    FIDELITY_SCREEN,
    OBJECTIVES,
    ROLE_SEARCH,
    ROLE_UNPRUNED,
)
from autoprune.tasks import Task

__all__ = ["Objective", "SearchSetup", "paying_space", "study_target"]  # the last three: re-exported from _setup


_logger = logging.getLogger(__name__)
# A speedup whose interval comes out wide (a loaded machine) is measured again, up to this
# many times latency_budget_s in all (cached_speedup's max_budget_s).
_MAX_BUDGET_FACTOR = 4
_UNSET = object()


class Objective:
    """The function Optuna optimises: one trial, start to end, in this process.

    While a trial computes (pruning, fine-tuning, accuracy, MACs) this process holds the
    machine lock busy; only its own latency measurement lets go (see :mod:`autoprune._lock`).

    Speed is a ratio measured in one sitting: every trial's model is timed in alternation
    with the unpruned reference, which this process keeps prepared (a
    :class:`~autoprune.evaluation.SpeedupMeter`), and ``latency_ms`` is this process's
    unpruned latency (timed here, on this host) divided by that speedup, so machine drift
    between trials cancels and no host's milliseconds are another's.

    Search trials are screened first (:mod:`autoprune.study._screening`): pruned with a
    short fine-tune and BatchNorm re-estimated; only those that could reach the front get
    the full fine-tune. The rest end PRUNED with ``fidelity = "screen"``.
    """

    def __init__(self, setup: SearchSetup, unpruned: dict[str, Any] | None, lock: MachineLock) -> None:
        self.setup = setup
        self.cfg = setup.cfg
        self.task = setup.task
        self.lock = lock
        self.unpruned = unpruned
        self.target = study_target(self.cfg)
        cache_path = latency_cache_path(self.cfg)
        self.cache = LatencyCache(cache_path) if cache_path is not None else None
        self.host = socket.gethostname()
        self._meter: SpeedupMeter | None = None
        self._unpruned_samples: Any = _UNSET

    @property
    def meter(self) -> SpeedupMeter:
        """The unpruned reference, prepared once per process by the target's backend (the
        setup's: the Objectives of one process share it, and its reference time)."""
        if self._meter is None:
            self._meter = self.setup.meter(self.target)
        return self._meter

    def __call__(self, trial: optuna.Trial) -> tuple[float, ...]:
        role = trial.user_attrs.get("role", ROLE_SEARCH)
        try:
            if role != ROLE_UNPRUNED and self.unpruned is None:
                # Never wait for another worker while busy: its measurement of the unpruned
                # model would wait for us in turn.
                self.unpruned = wait_for_unpruned(trial.study)
            with self.lock.busy():
                return self._run(trial, role)
        except optuna.TrialPruned:
            raise
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
        if role == ROLE_SEARCH or trial.user_attrs.get("refined"):  # a refinement may land on an earlier schedule
            earlier = self._same_as_earlier(trial, schedule)
            if earlier is not None:
                self._repeat(trial, earlier)  # raises TrialPruned
        timings = {"finetune": 0.0, "screen": 0.0}
        screened: tuple[str, Speedup] | None = None
        if role != ROLE_UNPRUNED and self._screens(schedule) and self._screen_pays(trial, role):
            screened = self.screen(trial, role, schedule, timings)  # raises TrialPruned when not promoted
        pruned = self.prune(trial, schedule, timings)
        metrics = self.measure(trial, pruned, screened)
        trial.set_user_attr("fidelity", FIDELITY_FULL)
        values = self.record(trial, metrics)
        if role == ROLE_UNPRUNED:
            self.unpruned = dict(metrics)
            publish_references(trial.study, self.setup, metrics, trial.number, speedup=self._scan_speedup)
        return values

    # ------------------------------------------------------------------ the steps
    def _refuse_duplicate(self, trial: optuna.Trial) -> None:
        if not unpruned_metrics(trial.study):
            return
        # A second unpruned trial: a heartbeat retry of one whose worker died after
        # publishing, or two workers resuming a failed unpruned at once. Measuring again
        # would only publish the references twice.
        first = unpruned_trial_number(trial.study)
        raise AutopruneError(
            f"{DUPLICATE}: the unpruned model was already measured"
            + (f" in trial {first}" if first is not None else "")
            + "; this copy is not evaluated"
        )

    def _same_as_earlier(self, trial: optuna.Trial, schedule: Schedule) -> optuna.trial.FrozenTrial | None:
        """An earlier finished trial this one would only repeat: one with the same Schedule
        (same seed, same schedule: the same model and metrics), or, for a Schedule that
        prunes nothing, the unpruned reference (fine-tuning the unpruned model is not a
        pruning result)."""
        S = optuna.trial.TrialState
        done = trial.study.get_trials(deepcopy=False, states=(S.COMPLETE, S.PRUNED))
        if not schedule.active_layers():
            return next((t for t in done if t.user_attrs.get("role") == ROLE_UNPRUNED), None)
        text = trial.user_attrs["schedule"]
        return next((t for t in done if t.user_attrs.get("schedule") == text and "duplicate_of" not in t.user_attrs
                     and t.number != trial.number), None)  # fmt: skip

    def _repeat(self, trial: optuna.Trial, earlier: optuna.trial.FrozenTrial) -> None:
        """End ``trial`` PRUNED without running anything: ``earlier`` already holds its outcome.

        Not COMPLETE with ``earlier``'s values: the sampler would count the same point twice
        and sample it again (with the accuracy objective the prune-nothing schedules are all
        as good as the unpruned model, and TPE then proposes little else); a pruned trial
        tells it the region is explored."""
        unpruned = earlier.user_attrs.get("role") == ROLE_UNPRUNED
        what = "it prunes nothing: the unpruned model is" if unpruned else "its schedule is the one of"
        reason = f"not run: {what} trial {earlier.number}"
        trial.set_user_attr("duplicate_of", earlier.number)
        trial.set_user_attr("fine_tune_steps_spent", 0)
        trial.set_user_attr("fidelity", FIDELITY_REPEAT)
        trial.set_user_attr("repeat_reason", reason)
        raise optuna.TrialPruned(reason)

    def schedule(self, trial: optuna.Trial, role: str) -> Schedule:
        """The trial's Schedule: the sampler's, or a reference's enqueued parameters (the
        SearchSpace turns enqueued parameters into exactly the Schedule they describe)."""
        seed = self.cfg.seed
        if role == ROLE_UNPRUNED:
            # No parameters: the unpruned is not a candidate. With its (all "none") parameters
            # recorded, it is the most accurate trial, always in TPE's good group, and TPE kept
            # proposing schedules that prune nothing (repeats).
            schedule = Schedule(seed=seed)
        else:
            schedule = self.setup.search_space(trial.study).suggest(trial, seed=seed)
        trial.set_user_attr("role", role)
        trial.set_user_attr("schedule", schedule.to_json())
        trial.set_user_attr("schedule_summary", schedule.summary())
        trial.set_user_attr("host", self.host)
        return schedule

    def _screens(self, schedule: Schedule) -> bool:
        return (
            self.cfg.screening
            and self.task.fine_tune is not None
            and schedule.fine_tune_steps > 0
            and bool(schedule.active_layers())
        )

    def _scan_speedup(self, model: nn.Module) -> float:
        """The sensitivity scan's timing of one unit pruned alone: a paired speedup with half a
        trial's budget (the scan ranks units by it; the trials are timed in full).

        A timing in the latency cache is reused only when its interval is within
        ``latency_rel_tol`` (:func:`cached_speedup`; the cache keeps the narrower of the two).
        The scan runs once per study and is stored in it (``sensitivity``), so resuming or
        joining a study never times it again. A new study with the same seed on this machine
        gets the same sensitivity references when every scan timing it reads from the cache met the
        tolerance; one that did not is timed again, and its sensitivity references can differ."""
        budget = self.cfg.latency_budget_s / 2
        return cached_speedup(self.meter, model, self.cache, budget_s=budget, rel_tol=self.cfg.latency_rel_tol).ratio

    def _screen_pays(self, trial: optuna.Trial, role: str) -> bool:
        """References are always screened (they calibrate the rule); a search trial only
        while screening saves more fine-tuning than it costs (:func:`screening_pays`). A
        trial not screened says why in ``screen_skipped``."""
        if role != ROLE_SEARCH:
            return True
        decision = screening_pays(trial.study, self.cfg, before=trial.number)
        if not decision.promote:
            trial.set_user_attr("screen_skipped", decision.reason)
        return decision.promote

    def screen(
        self, trial: optuna.Trial, role: str, schedule: Schedule, timings: dict[str, float]
    ) -> tuple[str, Speedup]:
        """The cheap estimate: the schedule with a short fine-tune per step, BatchNorm
        re-estimated, validation accuracy and the (final architecture's) speedup. References
        are screened too, so the promotion rule learns how much a full fine-tune recovers;
        a search trial that could not reach the front ends here (TrialPruned). Returns the
        speedup and its cache key, for the full stage to reuse."""
        steps = max(1, round(schedule.fine_tune_steps * self.cfg.screen_fraction))
        t0 = time.perf_counter()
        accuracy, cheap = screen(
            self.task.model,
            schedule,
            example_inputs=self.task.example_inputs,
            evaluate=self.task.evaluate,
            fine_tune=self._timed_fine_tune(timings, "screen_finetune", distill=schedule.distill),
            calibrate=self.task.calibrate,
            fine_tune_steps=steps,
            output=self.task.output,
        )
        speedup = cached_speedup(
            self.meter,
            cheap,
            self.cache,
            budget_s=self.cfg.latency_budget_s,
            rel_tol=self.cfg.latency_rel_tol,
            max_budget_s=_MAX_BUDGET_FACTOR * self.cfg.latency_budget_s,
        )
        timings["screen"] = time.perf_counter() - t0
        trial.set_user_attr("screen_accuracy", accuracy)
        trial.set_user_attr("screen_speedup", speedup.ratio)
        trial.set_user_attr("screen_speedup_low", speedup.low)  # its interval: the full stage reuses it
        trial.set_user_attr("screen_speedup_high", speedup.high)  # only within latency_rel_tol
        trial.set_user_attr("screen_fine_tune_steps", steps * schedule.steps)
        trial.set_user_attr("time_screen_s", round(timings["screen"], 4))
        screened = (speedup_key(cheap, self.meter, self.cfg.latency_budget_s), speedup)
        if role != ROLE_SEARCH:
            return screened
        assert self.unpruned is not None
        decision = Screening.from_study(trial.study, self.cfg, self.unpruned).decide(accuracy, speedup.ratio)
        trial.set_user_attr("screen_reason", decision.reason)
        if not decision.promote:
            trial.set_user_attr("fidelity", FIDELITY_SCREEN)
            trial.set_user_attr("fine_tune_steps_spent", steps * schedule.steps)
            raise optuna.TrialPruned(decision.reason)
        return screened

    def prune(self, trial: optuna.Trial, schedule: Schedule, timings: dict[str, float]) -> nn.Module:
        """A pruned copy of the task's model, fine-tuned as the schedule says."""
        fine_tune = (
            self._timed_fine_tune(timings, "finetune", distill=schedule.distill) if schedule.fine_tune_steps > 0 else None
        )
        t0 = time.perf_counter()
        pruned = apply_schedule(
            self.task.model, schedule, example_inputs=self.task.example_inputs, fine_tune=fine_tune, output=self.task.output
        )
        total = time.perf_counter() - t0
        trial.set_user_attr("time_prune_s", round(total - timings["finetune"], 4))
        trial.set_user_attr("time_finetune_s", round(timings["finetune"], 4))
        spent = int(trial.user_attrs.get("screen_fine_tune_steps", 0))
        if fine_tune is not None:
            spent += schedule.fine_tune_steps * schedule.steps
        trial.set_user_attr("fine_tune_steps_spent", spent)
        return pruned

    def measure(
        self, trial: optuna.Trial, pruned: nn.Module, screened: tuple[str, Speedup] | None = None
    ) -> dict[str, Any]:
        """Every metric of the pruned model. Accuracy and MACs are busy work; the speedup is
        timed in alternation with the unpruned reference under the machine lock.

        ``screened``: the screen's speedup of this trial and its cache key. The screen timed
        the same architecture with the full budget; when its interval is within
        ``latency_rel_tol`` it is this trial's one measurement (timing it again doubled the
        search's latency time for a slightly narrower interval: 26 of 41 trials of a digits
        search), and ``latency_from_screen`` says so. A wider one, or a different
        architecture, is measured again.

        ``latency_ms`` is this process's reference latency (:meth:`SpeedupMeter.reference_ms`:
        the unpruned model timed on this host in this sitting) over the trial's speedup;
        ``reference_latency_ms`` and ``latency_host`` record which, so trials timed by other
        workers, hosts or resumes each carry their own."""
        cache, rel_tol = self.cache, self.cfg.latency_rel_tol
        if (
            screened is not None
            and screened[1].rel_halfwidth <= rel_tol
            and screened[0] == speedup_key(pruned, self.meter, self.cfg.latency_budget_s)
        ):
            cache = LatencyCache()  # this trial's hand-over (the study's cache holds the narrower of the two)
            cache.put_speedup(screened[0], screened[1])
            trial.set_user_attr("latency_from_screen", True)
        task, drop_se = self._scored(pruned)
        metrics = evaluate(
            pruned,
            task,
            speedup_meter=self.meter,
            cache=cache,
            time_budget_s=self.cfg.latency_budget_s,
            rel_tol=rel_tol,
            # On a loaded machine a measurement can end with a few scattered rounds (an
            # interval from 0.2x to 20x); it is measured again, up to 4x the budget in all.
            max_time_budget_s=_MAX_BUDGET_FACTOR * self.cfg.latency_budget_s,
        ).as_dict()
        if not math.isfinite(metrics["accuracy"]):
            raise FloatingPointError(f"accuracy is {metrics['accuracy']} (NaN/inf weights after fine-tuning?)")
        metrics["accuracy_drop_se"] = drop_se
        # Drift-free latency: this process's one reference latency over the trial's paired
        # speedup. Its own, timed here: a reference timed by another host, or on another day,
        # would turn this host's ratio into milliseconds it never measured.
        metrics["measured_latency_ms"] = metrics["latency_ms"]
        metrics["measured_reference_ms"] = metrics["reference_latency_ms"]
        reference_ms = self.meter.reference_ms(budget_s=self.cfg.latency_budget_s, rel_tol=self.cfg.latency_rel_tol)
        metrics["reference_latency_ms"] = reference_ms
        metrics["latency_host"] = self.host
        speedup = float(metrics["speedup"])
        metrics["latency_ms"] = reference_ms / speedup if speedup > 0 else math.inf
        trial.set_user_attr("time_eval_s", round(float(metrics.get("time_eval_s", 0.0)), 4))
        trial.set_user_attr("time_latency_s", round(float(metrics.get("time_latency_s", 0.0)), 4))
        if self.task.test is not None:
            # Held out: recorded for the user, never a value, constraint or parameter the
            # sampler sees (the search selects on validation alone).
            with torch.inference_mode():
                metrics["test_accuracy"] = float(self.task.test(pruned))
        return metrics

    def record(self, trial: optuna.Trial, metrics: dict[str, Any]) -> tuple[float, ...]:
        """Store the metrics and the derived ones, set the constraints; the objective values."""
        derived = derived_metrics(metrics, self.unpruned or metrics)
        for key, value in {**metrics, **derived}.items():
            trial.set_user_attr(key, value)
        feasible = True
        # What the sampler sees is the drop as measured. A trial that breaks only the accuracy
        # limit, by less than drop_noise_se standard errors of its drop, is "within noise":
        # the validation split cannot tell it from the limit, and the front shows it.
        se = float(metrics.get("accuracy_drop_se", math.nan))
        allowance = self.cfg.drop_noise_se * se if math.isfinite(se) else 0.0
        within = True
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
                within = within and excess <= (allowance if name == "accuracy_drop" else 0.0)
        trial.set_user_attr("feasible", feasible)
        trial.set_user_attr("within_noise", within and not feasible)
        return tuple(float(metrics[OBJECTIVES[o][0]]) for o in self.cfg.objectives)

    # ------------------------------------------------------------------ helpers
    def _scored(self, model: nn.Module) -> tuple[Task, float]:
        """The task to evaluate ``model`` with, and the standard error of its accuracy drop.

        With the task's ``evaluate_samples``, ``model`` is scored once per example: the
        mean is its accuracy (the task returned scores that one pass), and the paired
        difference from the unpruned model's scores gives the standard error. Without
        it (a metric of the whole split, a shuffling loader) the error is NaN."""
        if self.task.evaluate_samples is None:
            return self.task, math.nan
        with torch.inference_mode():
            samples = self.task.evaluate_samples(model)
        if samples is None:
            return self.task, math.nan
        score = sample_mean(samples)
        return replace(self.task, evaluate=lambda _model: score), drop_standard_error(self.unpruned_samples, samples)

    @property
    def unpruned_samples(self) -> torch.Tensor | None:
        """The unpruned model's validation scores per example (once per process)."""
        if self._unpruned_samples is _UNSET:
            evaluate_samples = self.task.evaluate_samples
            with torch.inference_mode():
                self._unpruned_samples = None if evaluate_samples is None else evaluate_samples(self.task.model)
        samples: torch.Tensor | None = self._unpruned_samples
        return samples

    def _timed_fine_tune(
        self, timings: dict[str, float], key: str, *, distill: bool = False
    ) -> Callable[[nn.Module, int], None] | None:
        fine_tune = self.task.distill_fine_tune if distill else self.task.fine_tune
        if fine_tune is None:
            return None

        def run(model: nn.Module, steps: int) -> None:
            t = time.perf_counter()
            fine_tune(model, steps)
            timings[key] = timings.get(key, 0.0) + time.perf_counter() - t

        return run
