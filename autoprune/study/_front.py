"""The study's front: the trials a user picks from, and what a trial's timing is sure of.

Reads a study through :mod:`autoprune.study.keys` (feasibility, objective names, the front's
tolerance); computes, never stores.
"""

from __future__ import annotations

from typing import Any

from optuna.study import StudyDirection
from optuna.trial import TrialState

from autoprune.study.keys import front_tolerance, is_feasible, is_within_noise, objective_names

__all__ = ["pareto_front", "sure_speedup"]


def sure_speedup(attrs: Any) -> float:
    """The slow end of a trial's speedup interval (``speedup_low``; the speedup itself when no
    interval is stored): what its timing is sure of."""
    ratio = float(attrs.get("speedup", 0.0))
    low = attrs.get("speedup_low")
    return min(ratio, float(low)) if isinstance(low, (int, float)) and low > 0 else ratio


def pareto_front(study: Any, tolerance: float | None = None) -> list[Any]:
    """The study's front: feasible, complete trials that ran their whole schedule and that no
    other such trial beats by more than the noise, in trial order. With a tolerance, trials
    that broke the accuracy limit by less than the validation split can measure
    (:func:`is_within_noise`) count as feasible; with 0 (the strict front, Optuna's
    ``best_trials``) they do not.

    Trial ``b`` beats trial ``a`` when it is no worse on every objective and its accuracy is
    higher by at least ``tolerance`` points (the study's :func:`front_tolerance` by default).
    With 0 this is the Pareto front. With the validation noise it keeps the trials that the
    validation split cannot tell apart from a faster (smaller) one: a trial 1 image better on
    270 images does not hide every slower trial. With a tolerance, the timing's noise counts
    too: ``b`` is no worse on latency only when the slow end of its speedup's 95% interval is
    (a loaded machine can leave a measurement at 1.6x with an interval from 0.2x to 20x; it
    must not hide a trial measured at 1.3x +- 3%).
    """
    tol = front_tolerance(study) if tolerance is None else float(tolerance)
    names = objective_names(study)
    signs = [1.0 if d == StudyDirection.MAXIMIZE else -1.0 for d in study.directions]
    trials = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.values is not None
        and not t.user_attrs.get("early_rejected", False)
        and "schedule" in t.user_attrs
        and (is_feasible(t) or (tol > 0 and is_within_noise(t)))
    ]
    # Every objective as "larger is better"; accuracy shifted by the tolerance when b is compared.
    gains = {t.number: [s * float(v) for s, v in zip(signs, t.values, strict=True)] for t in trials}
    margins = [tol if name == "accuracy" else 0.0 for name in names]
    # What a challenger is sure of: its latency at the slow end of its speedup's interval.
    sure = {t.number: list(gains[t.number]) for t in trials}
    if tol > 0 and "latency" in names:
        i = names.index("latency")
        for t in trials:
            if (sure_at := sure_speedup(t.user_attrs)) > 0:
                sure[t.number][i] *= float(t.user_attrs.get("speedup", 0.0)) / sure_at  # gains are -latency

    def beats(b: list[float], a: list[float]) -> bool:
        no_worse = all(bv - m >= av - 1e-9 for bv, av, m in zip(b, a, margins, strict=True))
        return no_worse and (any(m > 0 for m in margins) or b != a)

    return [a for a in trials if not any(b is not a and beats(sure[b.number], gains[a.number]) for b in trials)]
