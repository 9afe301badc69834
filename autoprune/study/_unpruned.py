"""The unpruned model's trial: enqueued first by the study's creator, its metrics published by
the worker that ran it (the numbers every drop and speedup is measured against), and waited
for by every other worker before its first trial."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import optuna

from autoprune._errors import AutopruneError
from autoprune._stored import unpruned_metrics
from autoprune.study.keys import ROLE_UNPRUNED

if TYPE_CHECKING:
    from autoprune.study._setup import SearchSetup

__all__ = ["DUPLICATE", "enqueue_unpruned", "unpruned_metrics", "unpruned_trials", "wait_for_unpruned"]

DUPLICATE = "duplicate unpruned reference"
UNPRUNED_WAIT_S = 900.0


def enqueue_unpruned(study: optuna.Study, setup: SearchSetup) -> None:
    """Put the unpruned model's trial first in the study's queue."""
    study.enqueue_trial(setup.space.uniform_params(0.0), user_attrs={"role": ROLE_UNPRUNED})


def unpruned_trials(study: optuna.Study, *states: optuna.trial.TrialState) -> list[optuna.trial.FrozenTrial]:
    """The study's unpruned-reference trials in these states."""
    trials = study.get_trials(deepcopy=False, states=states)
    return [t for t in trials if t.user_attrs.get("role") == ROLE_UNPRUNED]


def wait_for_unpruned(study: optuna.Study) -> dict[str, Any]:
    """The unpruned model's metrics, waiting while another worker is still measuring them."""
    deadline = time.monotonic() + UNPRUNED_WAIT_S
    while True:
        unpruned = unpruned_metrics(study)  # a fresh read from the storage
        if unpruned:
            return unpruned
        if time.monotonic() > deadline:
            raise AutopruneError(
                f"no unpruned metrics after {UNPRUNED_WAIT_S:.0f} s: the unpruned model was not evaluated"
            )
        time.sleep(1.0)

