"""More references where each family crosses the study's constraints: once every first
reference has finished, values bracketed between the family's last feasible and first
infeasible point (a coarse sweep rarely lands on the fastest schedule it can offer)."""

from __future__ import annotations

from typing import Any

import optuna

from autoprune.study._references import REFERENCE_FAMILIES, _allocations, _global_references, _in_turn, _Reference
from autoprune.study._setup import SearchSetup
from autoprune.study.keys import ROLE_GLOBAL, ROLE_SENSITIVITY, ROLE_UNIFORM, is_feasible, reference_value

__all__ = ["bracket", "refine_references"]


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

    The uniform references (``reference_amounts``), the sensitivity references
    (``sensitivity_targets``) and the global references (``global_reference_amounts``) are
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
        role: [(value, is_feasible(t))
               for t in finished if t.user_attrs.get("role") == role and (value := reference_value(t)) is not None]
        for role in REFERENCE_FAMILIES
    }  # fmt: skip
    taken = [dict(t.params) for t in refs]
    families: list[list[_Reference]] = [[], [], []]
    for amount in bracket(points[ROLE_UNIFORM], cfg.reference_refinements, cfg.space.amount_step):
        params = space.uniform_params(amount)
        if params not in taken:
            taken.append(params)
            families[0].append((params, {"role": ROLE_UNIFORM, "uniform_amount": amount}))
    if "sensitivity" in study.user_attrs:
        targets = bracket(points[ROLE_SENSITIVITY], cfg.reference_refinements, 0.01)
        for target, params in _allocations(setup, study, targets, taken):
            families[1].append((params, {"role": ROLE_SENSITIVITY, "sensitivity_target": target}))
    ratios = bracket(points[ROLE_GLOBAL], cfg.reference_refinements, cfg.space.amount_step)
    for ratio, params in _global_references(setup, study, ratios, taken):
        families[2].append((params, {"role": ROLE_GLOBAL, "global_amount": ratio}))
    chosen = _in_turn(families)[:room]  # as many as the budget has room for
    for params, attrs in chosen:
        study.enqueue_trial(params, user_attrs={**attrs, "refined": True})
    added = [attrs for _, attrs in chosen]
    study.set_user_attr("references_refined", added)
    return added
