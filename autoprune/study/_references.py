"""The reference trials every study runs first, enqueued once the unpruned model is measured:
the uniform schedules a person would try by hand, the sensitivity references (the scan's
greedy allocations at MACs targets) and Torch-Pruning's global pruning.

The worker that ran the unpruned trial publishes its metrics and enqueues these, exactly once
(:mod:`._unpruned` has the unpruned trial; :mod:`._refine` adds references where each family
crosses the constraints).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from itertools import zip_longest
from typing import TYPE_CHECKING, Any

import optuna

from autoprune import executor  # global_amounts looked up per call (tests replace it)
from autoprune._stored import UNPRUNED, UNPRUNED_TRIAL, unpruned_metrics
from autoprune.sensitivity import Sensitivity, macs_meter, scan_sensitivity, sensitivity_allocations
from autoprune.study._setup import SearchSetup
from autoprune.study.keys import (
    REFERENCE_VALUE_KEYS,
    ROLE_GLOBAL,
    ROLE_SENSITIVITY,
    ROLE_UNIFORM,
    UNPRUNED_METRICS,
)

if TYPE_CHECKING:
    from torch import nn

    from autoprune.config import SearchConfig
    from autoprune.space import SearchSpace
    from autoprune.tasks import Task

__all__ = ["REFERENCE_FAMILIES", "publish_references", "scan_task"]

_logger = logging.getLogger(__name__)

# The reference families the refinement brackets: role -> the attribute holding its value.
REFERENCE_FAMILIES = {role: keys[0] for role, keys in REFERENCE_VALUE_KEYS.items()}  # what each family stores now


def publish_references(
    study: optuna.Study,
    setup: SearchSetup,
    metrics: Mapping[str, Any],
    number: int,
    *,
    speedup: Callable[[nn.Module], float] | None = None,
) -> None:
    """Publish the unpruned model's metrics measured by trial ``number``; enqueue the uniform
    references, the sensitivity references and the global references.

    Only the worker that ran the unpruned trial gets here (popping a waiting trial is
    atomic on a server database), so the references are enqueued exactly once. The
    sensitivity scan runs here too, once per study, and is stored with it; with ``speedup``
    (``model -> ratio`` on the study's target) it times every structured point, and the
    sensitivity references spread pruning by accuracy lost per latency saved.
    """
    if unpruned_metrics(study):
        return  # a second run of the unpruned trial (a heartbeat retry): references exist
    study.set_user_attr("layers", [i.as_dict() for i in setup.layers])
    study.set_user_attr("task", dict(setup.task.spec))
    if setup.scale_notice is not None:
        study.set_user_attr("scale_notice", setup.scale_notice)  # readers rebuild the task x100 too
    if setup.space_notice is not None:
        study.set_user_attr("space_notice", setup.space_notice)
    by_sensitivity = _sensitivity_references(study, setup, speedup)  # the scan first: the sensitivity space is built on it
    space = setup.search_space(study)
    cfg = setup.cfg
    uniform = [(space.uniform_params(a), {"role": ROLE_UNIFORM, "uniform_amount": a}) for a in cfg.reference_amounts]
    taken = [p for p, _ in uniform] + [p for _, p in by_sensitivity]
    families = [
        uniform,
        [(params, {"role": ROLE_SENSITIVITY, "sensitivity_target": target}) for target, params in by_sensitivity],
        [(params, {"role": ROLE_GLOBAL, "global_amount": ratio})
         for ratio, params in _global_references(setup, study, cfg.global_reference_amounts, taken)],
    ]  # fmt: skip
    # No more than the trial budget: a reference left waiting would run in a later search
    # of the study, outside the budget it was asked for.
    for params, attrs in _in_turn(families)[: cfg.trials]:
        study.enqueue_trial(params, user_attrs=attrs)
    study.set_user_attr(UNPRUNED_TRIAL, number)
    # Last: a worker waiting for the unpruned metrics may start as soon as they appear.
    study.set_user_attr(UNPRUNED, {k: metrics[k] for k in UNPRUNED_METRICS if k in metrics})


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


def _sensitivity_references(
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
    return _allocations(setup, study, cfg.sensitivity_targets, taken)


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
        for params in sensitivity_allocations(searched, sens, [target], resource=sens.path_resource, measure=measure):
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
