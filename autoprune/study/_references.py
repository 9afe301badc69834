"""The references every study measures first: the unpruned model (the baseline that drops
and speedups are measured against) and the uniform schedules a person would try by hand.

The creator of a study enqueues the unpruned trial; the worker that runs it publishes the
baseline and enqueues the uniform references, exactly once. Every other worker waits for
the baseline before its first trial.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import optuna

from autoprune._errors import AutopruneError
from autoprune.study.keys import BASELINE_METRICS, ROLE_UNIFORM, ROLE_UNPRUNED, ROLE_WARM

if TYPE_CHECKING:
    from autoprune.config import SearchConfig
    from autoprune.sensitivity import Sensitivity
    from autoprune.space import SearchSpace
    from autoprune.study._objective import SearchSetup
    from autoprune.tasks import Task

__all__ = [
    "scan_task","DUPLICATE", "enqueue_unpruned", "publish_references", "unpruned_trials", "wait_for_baseline"]

DUPLICATE = "duplicate unpruned reference"
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


def publish_references(study: optuna.Study, setup: SearchSetup, metrics: Mapping[str, Any], number: int) -> None:
    """Publish the baseline measured by trial ``number``; enqueue the uniform references and
    the sensitivity warm starts.

    Only the worker that ran the unpruned trial gets here (popping a waiting trial is
    atomic on a server database), so the references are enqueued exactly once. The
    sensitivity scan runs here too, once per study, and is stored with it.
    """
    if "baseline" in study.user_attrs:
        return  # a second run of the unpruned trial (a heartbeat retry): references exist
    study.set_user_attr("layers", [i.as_dict() for i in setup.layers])
    study.set_user_attr("task", dict(setup.task.spec))
    if setup.scale_notice is not None:
        study.set_user_attr("scale_notice", setup.scale_notice)  # readers rebuild the task x100 too
    if setup.space_notice is not None:
        study.set_user_attr("space_notice", setup.space_notice)
    warm = _warm_starts(study, setup)  # the scan first: the sensitivity space is built on it
    space = setup.search_space(study)
    for amount in setup.cfg.reference_amounts:
        study.enqueue_trial(space.uniform_params(amount), user_attrs={"role": ROLE_UNIFORM, "uniform_amount": amount})
    for params in warm:
        study.enqueue_trial(params, user_attrs={"role": ROLE_WARM})
    study.set_user_attr("baseline_trial", number)
    # Last: a worker waiting for the baseline may start as soon as it appears.
    study.set_user_attr("baseline", {k: metrics[k] for k in BASELINE_METRICS if k in metrics})


def scan_task(task: Task, space: SearchSpace, cfg: SearchConfig) -> Sensitivity:
    """The sensitivity scan a study with ``cfg`` runs on ``task`` (validation scores,
    BatchNorm re-estimated with the task's ``calibrate``), as ``autoprune layers
    --sensitivity`` shows it."""
    from autoprune.sensitivity import scan_sensitivity

    return scan_sensitivity(
        task.model,
        task.example_inputs,
        space,
        evaluate=task.evaluate,
        calibrate=task.calibrate,
        amounts=cfg.sensitivity_amounts,
        seed=cfg.seed,
    )


def _warm_starts(study: optuna.Study, setup: SearchSetup) -> list[dict[str, Any]]:
    """Scan every unit's sensitivity (pruned alone, BatchNorm re-estimated, no fine-tune),
    store it in the study, and return the sensitivity-greedy allocations of the configured
    MACs targets as trial parameters (those the uniform references already run are left out)."""
    from autoprune.sensitivity import macs_meter, warm_starts

    cfg, task, space = setup.cfg, setup.task, setup.space
    if not cfg.sensitivity or not any(u.supports("structured") for u in space.units):
        return []
    sens = scan_task(task, space, cfg)
    study.set_user_attr("sensitivity", sens.to_dict())
    searched = setup.search_space(study)
    uniform = [searched.uniform_params(a) for a in cfg.reference_amounts]
    params = warm_starts(
        searched, sens, cfg.warm_start_targets, measure=macs_meter(task.model, task.example_inputs, space)
    )
    return [p for p in params if p not in uniform]
