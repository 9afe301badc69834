"""The references every study measures first: the unpruned model (the baseline that drops
and speedups are measured against) and the uniform schedules a person would try by hand.

The creator of a study enqueues the unpruned trial; the worker that runs it publishes the
baseline and enqueues the uniform references, exactly once. Every other worker waits for
the baseline before its first trial.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from itertools import zip_longest
from typing import TYPE_CHECKING, Any

import optuna

from autoprune import executor  # global_amounts looked up per call (tests replace it)
from autoprune._errors import AutopruneError
from autoprune.sensitivity import Sensitivity, macs_meter, scan_sensitivity, warm_starts
from autoprune.study._setup import SearchSetup
from autoprune.study.keys import (
    BASELINE_METRICS,
    ROLE_GLOBAL,
    ROLE_UNIFORM,
    ROLE_UNPRUNED,
    ROLE_WARM,
    is_feasible,
)

if TYPE_CHECKING:
    from torch import nn

    from autoprune.config import SearchConfig
    from autoprune.space import SearchSpace
    from autoprune.tasks import Task

__all__ = [
    "DUPLICATE",
    "REFERENCE_FAMILIES",
    "bracket",
    "enqueue_unpruned",
    "publish_references",
    "refine_references",
    "scan_task",
    "unpruned_trials",
    "wait_for_baseline",
]

_logger = logging.getLogger(__name__)

DUPLICATE = "duplicate unpruned reference"
# The reference families the refinement brackets: role -> the attribute holding its value.
REFERENCE_FAMILIES = {ROLE_UNIFORM: "uniform_amount", ROLE_WARM: "warm_target", ROLE_GLOBAL: "global_amount"}
BASELINE_WAIT_S = 900.0


def enqueue_unpruned(study: optuna.Study, setup: SearchSetup) -> None:
    """Put the unpruned model's trial first in the study's queue."""
    study.enqueue_trial(setup.space.uniform_params(0.0), user_attrs={"role": ROLE_UNPRUNED})


def unpruned_trials(study: optuna.Study, *states: optuna.trial.TrialState) -> list[optuna.trial.FrozenTrial]:
    """The study's unpruned-reference trials in these states."""
    trials = study.get_trials(deepcopy=False, states=states)
    return [t for t in trials if t.user_attrs.get("role") == ROLE_UNPRUNED]


def wait_for_baseline(study: optuna.Study) -> dict[str, Any]:
    """The unpruned model's metrics, waiting while another worker is still measuring them."""
    deadline = time.monotonic() + BASELINE_WAIT_S
    while True:
        baseline = study.user_attrs.get("baseline")  # a fresh read from the storage
        if baseline is not None:
            return dict(baseline)
        if time.monotonic() > deadline:
            raise AutopruneError(f"no baseline after {BASELINE_WAIT_S:.0f} s: the unpruned model was not evaluated")
        time.sleep(1.0)


def publish_references(
    study: optuna.Study,
    setup: SearchSetup,
    metrics: Mapping[str, Any],
    number: int,
    *,
    speedup: Callable[[nn.Module], float] | None = None,
) -> None:
    """Publish the baseline measured by trial ``number``; enqueue the uniform references, the
    sensitivity warm starts and the global references.

    Only the worker that ran the unpruned trial gets here (popping a waiting trial is
    atomic on a server database), so the references are enqueued exactly once. The
    sensitivity scan runs here too, once per study, and is stored with it; with ``speedup``
    (``model -> ratio`` on the study's target) it times every structured point, and the
    warm starts spread pruning by accuracy lost per latency saved.
    """
    if "baseline" in study.user_attrs:
        return  # a second run of the unpruned trial (a heartbeat retry): references exist
    study.set_user_attr("layers", [i.as_dict() for i in setup.layers])
    study.set_user_attr("task", dict(setup.task.spec))
    if setup.scale_notice is not None:
        study.set_user_attr("scale_notice", setup.scale_notice)  # readers rebuild the task x100 too
    if setup.space_notice is not None:
        study.set_user_attr("space_notice", setup.space_notice)
    warm = _warm_starts(study, setup, speedup)  # the scan first: the sensitivity space is built on it
    space = setup.search_space(study)
    cfg = setup.cfg
    uniform = [(space.uniform_params(a), {"role": ROLE_UNIFORM, "uniform_amount": a}) for a in cfg.reference_amounts]
    taken = [p for p, _ in uniform] + [p for _, p in warm]
    families = [
        uniform,
        [(params, {"role": ROLE_WARM, "warm_target": target}) for target, params in warm],
        [(params, {"role": ROLE_GLOBAL, "global_amount": ratio})
         for ratio, params in _global_references(setup, study, cfg.global_reference_amounts, taken)],
    ]  # fmt: skip
    # No more than the trial budget: a reference left waiting would run in a later search
    # of the study, outside the budget it was asked for.
    for params, attrs in _in_turn(families)[: cfg.trials]:
        study.enqueue_trial(params, user_attrs=attrs)
    study.set_user_attr("baseline_trial", number)
    # Last: a worker waiting for the baseline may start as soon as it appears.
    study.set_user_attr("baseline", {k: metrics[k] for k in BASELINE_METRICS if k in metrics})


def scan_task(
    task: Task, space: SearchSpace, cfg: SearchConfig, *, speedup: Callable[[nn.Module], float] | None = None
) -> Sensitivity:
    """The sensitivity scan a study with ``cfg`` runs on ``task`` (validation scores,
    BatchNorm re-estimated with the task's ``calibrate``), as ``autoprune layers
    --sensitivity`` shows it; ``speedup`` times every structured point."""
    return scan_sensitivity(
        task.model,
        task.example_inputs,
        space,
        evaluate=task.evaluate,
        calibrate=task.calibrate,
        speedup=speedup,
        amounts=cfg.sensitivity_amounts,
        seed=cfg.seed,
    )


def _warm_starts(
    study: optuna.Study, setup: SearchSetup, speedup: Callable[[nn.Module], float] | None = None
) -> list[tuple[float, dict[str, Any]]]:
    """Scan every unit's sensitivity (pruned alone, BatchNorm re-estimated, no fine-tune;
    timed with ``speedup`` when latency is an objective), store it in the study, and return
    the sensitivity-greedy allocations of the configured MACs targets as (target, trial
    parameters) (those the uniform references already run are left out, and a target whose
    allocation repeats an earlier one)."""
    cfg, space = setup.cfg, setup.space
    if not cfg.sensitivity or not any(u.supports("structured") for u in space.units):
        return []
    timed = speedup if "latency" in cfg.objectives and cfg.sensitivity_resource == "latency" else None
    sens = scan_task(setup.task, space, cfg, speedup=timed)
    study.set_user_attr("sensitivity", sens.to_dict())
    searched = setup.search_space(study)
    taken = [searched.uniform_params(a) for a in cfg.reference_amounts]
    return _allocations(setup, study, cfg.warm_start_targets, taken)


def _allocations(
    setup: SearchSetup, study: optuna.Study, targets: list[float], taken: list[dict[str, Any]]
) -> list[tuple[float, dict[str, Any]]]:
    """The sensitivity-greedy allocation of each MACs target, as trial parameters, leaving
    out those already in ``taken`` (which grows). The greedy path takes the steps that lose
    the least accuracy per latency saved when the scan was timed (per MACs saved otherwise);
    each target is the first allocation on it that removes that share of the MACs, counted."""
    task, space = setup.task, setup.space
    sens = Sensitivity.from_dict(study.user_attrs["sensitivity"])
    searched = setup.search_space(study)
    measure = macs_meter(task.model, task.example_inputs, space)
    out: list[tuple[float, dict[str, Any]]] = []
    for target in targets:
        for params in warm_starts(searched, sens, [target], resource=sens.path_resource, measure=measure):
            if params not in taken:
                taken.append(params)
                out.append((target, params))
    return out


_Reference = tuple[dict[str, Any], dict[str, Any]]  # (trial params, user attrs)


def _in_turn(families: list[list[_Reference]]) -> list[_Reference]:
    """The references of several families, one from each in turn (the first of each, then
    the second ...), so a budget that cuts the list keeps every family."""
    return [pair for row in zip_longest(*families) for pair in row if pair is not None]


def _global_references(
    setup: SearchSetup, study: optuna.Study, ratios: list[float], taken: list[dict[str, Any]]
) -> list[tuple[float, dict[str, Any]]]:
    """What Torch-Pruning's global pruning does at each ratio (L2 magnitude, each group's
    scores normalised by their mean and ranked across groups, as a person writes it by
    hand), as trial parameters: its per-unit amounts, on the space's grid and caps. Those
    already in ``taken`` (which grows) are left out. A model on which global pruning fails
    gets none, with a warning: the uniform references and the search go on."""
    task, space = setup.task, setup.search_space(study)
    units = {u.key: [i.name for i in u.layers] for u in setup.space.units if u.supports("structured")}
    if not ratios or not units:
        return []
    out: list[tuple[float, dict[str, Any]]] = []
    for ratio in ratios:
        try:
            amounts = executor.global_amounts(
                task.model, task.example_inputs, ratio, units, max_amount=setup.cfg.space.max_amount, output=task.output
            )
        except Exception as exc:  # noqa: BLE001 - a reference family is optional; say why and go on
            _logger.warning("global references left out: Torch-Pruning's global pruning failed (%s)", exc)
            return out
        params = space.params_for({u: a for u, a in amounts.items() if a > 0})
        if not space.schedule_from_params(params).active_layers():
            continue  # a ratio too small to prune anything on the space's grid: the unpruned model
        if params not in taken:
            taken.append(params)
            out.append((ratio, params))
    return out


def bracket(points: list[tuple[float, bool]], n: int, step: float) -> list[float]:
    """``n`` new values of a family of references where it crosses the accuracy constraint.

    ``points`` are (value, feasible) of the family's finished trials (an amount, or a share
    of MACs saved). The bracket is (the largest feasible value, the smallest infeasible value
    above it); with no feasible value, (0, the smallest value). Returns ``n`` evenly spaced
    values inside it, on the grid of ``step``, without values already in ``points`` (fewer
    when the bracket is narrow); none when the family is feasible at its largest value or
    nothing finished."""
    if n <= 0 or not points:
        return []
    feasible = [v for v, ok in points if ok]
    low = max(feasible, default=0.0)
    above = [v for v, ok in points if not ok and v > low]
    if not above:
        return []
    high = min(above)
    seen = {round(v / step) for v, _ in points}
    out: list[float] = []
    for k in range(1, n + 1):
        cell = round((low + (high - low) * k / (n + 1)) / step)
        value = round(cell * step, 10)
        if 0 < value < high and value > low and cell not in seen:
            seen.add(cell)
            out.append(value)
    return out


def refine_references(study: optuna.Study, setup: SearchSetup, room: int) -> list[dict[str, Any]]:
    """Once every reference has finished, add references where each family crosses the
    study's constraints, and return what was added (once per study; ``[]`` otherwise).

    The uniform references (``reference_amounts``), the sensitivity warm starts
    (``warm_start_targets``) and the global references (``global_reference_amounts``) are
    three coarse sweeps. Where each turns infeasible lies the fastest schedule it can offer,
    and a grid of 3 or 4 rarely lands on it: this adds
    ``reference_refinements`` evenly spaced values inside that bracket, for each family, at
    most ``room`` in all (the trials left in the budget), taken from the families in turn.
    """
    cfg = setup.cfg
    if cfg.reference_refinements <= 0 or "references_refined" in study.user_attrs or not cfg.constraints:
        return []
    if room <= 0:
        return []
    S = optuna.trial.TrialState
    refs = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("role") in REFERENCE_FAMILIES]
    if not refs or any(t.state in (S.WAITING, S.RUNNING) for t in refs):
        return []
    study.set_user_attr("references_refined", [])  # claimed: a second caller returns above
    finished = [t for t in refs if t.state == S.COMPLETE]
    space = setup.search_space(study)
    points = {
        role: [(float(t.user_attrs[key]), is_feasible(t))
               for t in finished if t.user_attrs.get("role") == role and key in t.user_attrs]
        for role, key in REFERENCE_FAMILIES.items()
    }  # fmt: skip
    taken = [dict(t.params) for t in refs]
    families: list[list[_Reference]] = [[], [], []]
    for amount in bracket(points[ROLE_UNIFORM], cfg.reference_refinements, cfg.space.amount_step):
        params = space.uniform_params(amount)
        if params not in taken:
            taken.append(params)
            families[0].append((params, {"role": ROLE_UNIFORM, "uniform_amount": amount}))
    if "sensitivity" in study.user_attrs:
        targets = bracket(points[ROLE_WARM], cfg.reference_refinements, 0.01)
        for target, params in _allocations(setup, study, targets, taken):
            families[1].append((params, {"role": ROLE_WARM, "warm_target": target}))
    ratios = bracket(points[ROLE_GLOBAL], cfg.reference_refinements, cfg.space.amount_step)
    for ratio, params in _global_references(setup, study, ratios, taken):
        families[2].append((params, {"role": ROLE_GLOBAL, "global_amount": ratio}))
    chosen = _in_turn(families)[:room]  # as many as the budget has room for
    for params, attrs in chosen:
        study.enqueue_trial(params, user_attrs={**attrs, "refined": True})
    added = [attrs for _, attrs in chosen]
    study.set_user_attr("references_refined", added)
    return added
