"""Local search at the fast end of the feasible front: neighbours of the fastest feasible trial.

The references find where each family crosses the accuracy limit; TPE, sampling a dozen or
more parameters at once, spends most of its trials in the slow, accurate part of the front
(measured: on the 1-D CNN task, 12 TPE trials within the limit at 0.95-1.41x while a refined
reference reached 1.65x). The fastest schedule that meets the limit is what a user with that
limit picks, so a share of the trials after the references (``neighbour_share``) go to its
neighbourhood instead: the incumbent (the fastest full-fidelity trial that meets every
constraint, by the slow end of its speedup's interval) with a few units' structured amounts
moved by one or two grid steps, every other choice kept. A *push* prunes one unit more
(chosen in proportion to what the scan says it saves, so units that save nothing are not
pushed); a *trade* also prunes another unit less by as much (the same speed spent
differently, as NetAdapt and AMC re-balance layers). Larger models move more units at once.

A neighbour is an ordinary search trial (``role = search``, ``neighbour_of`` = the
incumbent's number): it is screened, counted and shown to TPE like any other, so TPE's own
trials learn from it. When a neighbour meets the limit and is faster, it is the next
incumbent (first-improvement hill climbing); an incumbent whose neighbours keep failing is
left after ``patience`` of them for the next fastest one. When the last ``WINDOW`` (5)
neighbours all missed the constraints, the local search pauses (TPE gets the trials) until
some trial makes a new fastest feasible one: on a model where nothing faster stays within the
limit (``shapes-resnet``, 1.0-1.07x), it stops spending full fine-tunes there.
"""

from __future__ import annotations

import logging
import math
import random
from typing import TYPE_CHECKING, Any

import optuna

from autoprune._errors import AutopruneError
from autoprune.sensitivity import Sensitivity
from autoprune.study._front import pareto_front, sure_speedup
from autoprune.study.keys import (
    FIDELITY_FULL,
    FIDELITY_REPEAT,
    ROLE_SEARCH,
    ROLE_UNPRUNED,
    is_feasible,
    trial_schedule,
)

if TYPE_CHECKING:
    from autoprune.space import SearchSpace
    from autoprune.study._setup import SearchSetup

__all__ = ["NEIGHBOUR_OF", "WINDOW", "enqueue_neighbour", "incumbents", "neighbour_amounts", "stalled"]

_logger = logging.getLogger(__name__)

NEIGHBOUR_OF = "neighbour_of"
_TRIES = 30  # moves drawn per incumbent before it counts as exhausted
WINDOW = 5  # neighbours in a row that missed the constraints before the local search pauses


def _is_neighbour(trial: optuna.trial.FrozenTrial) -> bool:
    return NEIGHBOUR_OF in trial.user_attrs


def incumbents(study: optuna.Study, constrained: bool) -> list[optuna.trial.FrozenTrial]:
    """Full-fidelity pruned trials to search around, fastest first: those that meet every
    constraint (with constraints), else the front's."""
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    full = [
        t for t in done if t.user_attrs.get("fidelity") == FIDELITY_FULL and t.user_attrs.get("role") != ROLE_UNPRUNED
    ]
    if constrained:
        pool = [t for t in full if is_feasible(t)]
    else:
        numbers = {t.number for t in pareto_front(study)}
        pool = [t for t in full if t.number in numbers]
    return sorted(pool, key=lambda t: (-sure_speedup(t.user_attrs), t.number))


def neighbour_amounts(
    amounts: dict[str, float],
    caps: dict[str, float],
    savings: dict[str, float],
    step: float,
    rng: random.Random,
) -> dict[str, float]:
    """One move from ``amounts`` ({unit: structured amount}, 0 = not pruned): ``max(1,
    round(sqrt(units) / 2))`` units pruned one or two grid steps more (drawn in proportion to
    ``savings``, the share of the resource each unit's next steps save; uniformly when none
    is known), and on half the moves as many others pruned as much less. Returns the units
    that changed, with their new amounts."""
    units = list(amounts)
    moves = max(1, round(math.sqrt(len(units)) / 2))
    k = rng.choice((1, 2))
    changed: dict[str, float] = {}
    up = [u for u in units if amounts[u] + step <= caps[u] + 1e-9]
    for _ in range(min(moves, len(up))):
        weights = [max(savings.get(u, 0.0), 0.0) for u in up]
        unit = rng.choices(up, weights=weights)[0] if sum(weights) > 0 else rng.choice(up)
        up.remove(unit)
        changed[unit] = round(min(amounts[unit] + k * step, caps[unit]), 6)
    if changed and rng.random() < 0.5:
        down = [u for u in units if u not in changed and amounts[u] > 0]
        for _ in range(min(len(changed), len(down))):
            unit = rng.choice(down)
            down.remove(unit)
            changed[unit] = round(max(amounts[unit] - k * step, 0.0), 6)
    return changed


def _savings(study: optuna.Study, amounts: dict[str, float], step: float) -> dict[str, float]:
    """What one more step of each unit saves, by the study's sensitivity scan (its timing when
    it was timed, else MACs); empty without a scan."""
    data = study.user_attrs.get("sensitivity")
    if not data:
        return {}
    sens = Sensitivity.from_dict(data)
    out: dict[str, float] = {}
    for unit, amount in amounts.items():
        if sens.curve(unit) is None:
            continue
        resource = sens.path_resource
        gain = sens.saved_at(unit, amount + step, resource) - sens.saved_at(unit, amount, resource)
        if gain <= 0 and resource != "macs":
            gain = 0.1 * (sens.saved_at(unit, amount + step) - sens.saved_at(unit, amount))  # untimed: a small weight
        out[unit] = gain
    return out


def _due(study: optuna.Study, share: float) -> bool:
    """Is it a neighbour's turn? The neighbours' share of the search trials so far (repeats
    left out) stays at or below ``share``."""
    trials = study.get_trials(deepcopy=False)
    searched = [t for t in trials if t.user_attrs.get("role", ROLE_SEARCH) == ROLE_SEARCH
                and t.user_attrs.get("fidelity") != FIDELITY_REPEAT and t.state != optuna.trial.TrialState.FAIL]  # fmt: skip
    ours = sum(_is_neighbour(t) for t in searched)
    return ours < share * (len(searched) + 1)


def stalled(study: optuna.Study, centre: optuna.trial.FrozenTrial | None) -> bool:
    """Has the local search stopped paying? True when none of the last ``WINDOW`` finished
    neighbours met the constraints at full fidelity (infeasible, or screened out) and the
    fastest feasible trial, ``centre``, already had a neighbour: where every move from the
    fast end breaks the limit, the trials go to TPE, until a trial of any kind makes a new
    fastest feasible one (a new centre)."""
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    finished = [t for t in study.get_trials(deepcopy=False, states=done)
                if _is_neighbour(t) and t.user_attrs.get("fidelity") != FIDELITY_REPEAT]  # fmt: skip
    last = sorted(finished, key=lambda t: t.number)[-WINDOW:]
    if len(last) < WINDOW or any(t.user_attrs.get("fidelity") == FIDELITY_FULL and is_feasible(t) for t in last):
        return False
    return centre is None or any(t.user_attrs.get(NEIGHBOUR_OF) == centre.number for t in finished)


def enqueue_neighbour(study: optuna.Study, setup: SearchSetup, room: int) -> dict[str, Any] | None:
    """Enqueue one neighbour of the current incumbent when it is the neighbours' turn and
    the budget has ``room``; returns its user attributes (``None``: nothing enqueued)."""
    cfg = setup.cfg
    if cfg.neighbour_share <= 0 or room <= 0 or not _due(study, cfg.neighbour_share):
        return None
    space: SearchSpace = setup.search_space(study)
    structured = {u.key: u.max_amount for u in space.units if u.supports("structured")}
    if not structured:
        return None
    trials = study.get_trials(deepcopy=False)
    taken = [dict(t.params) for t in trials]
    tried: dict[int, int] = {}
    for t in trials:
        if _is_neighbour(t):
            tried[int(t.user_attrs[NEIGHBOUR_OF])] = tried.get(int(t.user_attrs[NEIGHBOUR_OF]), 0) + 1
    patience = max(4, len(structured))
    step = cfg.space.amount_step
    centres = incumbents(study, bool(cfg.constraints))
    if stalled(study, centres[0] if centres else None):
        return None
    for incumbent in centres:
        if tried.get(incumbent.number, 0) >= patience:
            continue
        try:
            schedule = trial_schedule(incumbent)
            current = space.unit_amounts(schedule)
        except AutopruneError:
            continue  # a schedule this space cannot read (an older study's): not a place to search
        amounts = {u: current[u][1] if current.get(u, ("none",))[0] == "structured" else 0.0 for u in structured}
        savings = _savings(study, amounts, step)
        # seeded by the study's seed and the incumbent: same seed, same neighbours
        rng = random.Random(f"{cfg.seed}:{incumbent.number}:{tried.get(incumbent.number, 0)}")
        for _ in range(_TRIES):
            changed = neighbour_amounts(amounts, structured, savings, step, rng)
            if not changed:
                break
            try:
                params = space.neighbour_params(schedule, changed)
            except AutopruneError:
                continue
            if params in taken or not space.schedule_from_params(params).active_layers():
                continue
            attrs = {"role": ROLE_SEARCH, NEIGHBOUR_OF: incumbent.number}
            study.enqueue_trial(params, user_attrs=attrs)
            _logger.info("neighbour of trial %d enqueued: %s", incumbent.number, changed)
            return attrs
        tried[incumbent.number] = patience  # no new move left around it
    return None
