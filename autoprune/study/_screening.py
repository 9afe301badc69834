"""Cheap screening: which search trials get the full fine-tune.

Every trial except the unpruned one is first pruned with a short fine-tune per step
(``screen_fraction`` of the schedule's) and BatchNorm re-estimated; its validation accuracy
then is a cheap estimate, and its speedup is already the final one (the architecture does
not depend on how long it is fine-tuned). References are always promoted, so every study
holds pairs (cheap accuracy, full accuracy) measured on this task, and every promoted trial
adds one.

The rule is an empirical bound, not a model. It assumes only that a better cheap score does
not lead to a worse full one, so what a pair reached from a cheap score at least as good as
the trial's bounds what the trial can reach: the trial is credited with the best full accuracy
reached by any pair whose cheap score is at most that of the nearest pair at or above the
trial's cheap score plus the margin (``screen_margin`` points: both scores carry noise), plus
the margin again. A trial with no pair at or above it is unknown territory and is credited
with the unpruned accuracy plus the margin (it could be the best). Every promoted trial adds
a pair, so a gap between pairs is filled by the trials that fall into it. A search trial is
promoted when, so credited, it could still meet the accuracy constraint and is not
dominated by a full-fidelity trial already measured. The rule errs toward promoting: a
wrongly promoted trial costs one fine-tune, a wrongly screened one can cost a point of the
front.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna

from autoprune.config import SearchConfig
from autoprune.study._front import sure_speedup
from autoprune.study.keys import FIDELITY_FULL, FIDELITY_SCREEN, ROLE_SEARCH, is_feasible, is_within_noise

__all__ = ["Decision", "Screening", "screening_pays"]

_MIN_PAIRS = 2
_SPEED_TOLERANCE = 0.02  # a front trial must be this much faster to dominate (speedups carry noise)


@dataclass(frozen=True)
class Decision:
    """Whether a screened trial gets the full fine-tune, and why (recorded on the trial)."""

    promote: bool
    reason: str


@dataclass(frozen=True)
class Screening:
    """The promotion rule of one study at one moment.

    Attributes:
        pairs: ``(cheap accuracy, full accuracy)`` of trials that ran both stages.
        front: ``(number, accuracy, speedup)`` of full-fidelity trials that are feasible or
            within noise of the accuracy limit (the slow end of the speedup's interval).
        unpruned_accuracy: the unpruned model's validation accuracy.
        max_drop: the accuracy constraint in points, if the study has one.
        margin: points of noise allowed on the cheap and on the full score (``screen_margin``).
        speed_only: whether the front check applies (objectives accuracy and latency only).
        drop_allowance: points by which a full trial's drop may exceed ``max_drop`` and the
            trial still be shown on the front (within noise): ``drop_noise_se`` times the
            median standard error of the study's full trials' drops (0 when none is known).
            A trial's own error is known only once it is scored in full, and the split's
            noise varies little between models.
    """

    pairs: Sequence[tuple[float, float]]
    front: Sequence[tuple[int, float, float]]
    unpruned_accuracy: float
    max_drop: float | None
    margin: float
    speed_only: bool = True
    drop_allowance: float = 0.0

    @classmethod
    def from_study(cls, study: optuna.Study, cfg: SearchConfig, unpruned: Mapping[str, Any]) -> Screening:
        done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        full = [t for t in done if t.user_attrs.get("fidelity") == FIDELITY_FULL and "accuracy" in t.user_attrs]
        pairs = [
            (float(t.user_attrs["screen_accuracy"]), float(t.user_attrs["accuracy"]))
            for t in full
            if "screen_accuracy" in t.user_attrs
        ]
        # A front trial dominates with what its timing is sure of: the slow end of its
        # speedup's 95% interval (a loaded machine can leave 1.6x in [0.2x, 20x]).
        front = [
            (t.number, float(t.user_attrs["accuracy"]), sure_speedup(t.user_attrs))
            for t in full
            if t.user_attrs.get("feasible", True) or t.user_attrs.get("within_noise", False)
        ]
        max_drop = cfg.constraints.get("max_accuracy_drop")
        errors = [float(t.user_attrs.get("accuracy_drop_se", math.nan)) for t in full]
        errors = [e for e in errors if math.isfinite(e) and e > 0]
        return cls(
            pairs=pairs,
            front=front,
            unpruned_accuracy=float(unpruned["accuracy"]),
            max_drop=float(max_drop) if max_drop is not None else None,
            margin=cfg.screen_margin,
            speed_only=set(cfg.objectives) == {"accuracy", "latency"},
            drop_allowance=cfg.drop_noise_se * statistics.median(errors) if errors else 0.0,
        )

    def reachable(self, accuracy: float) -> tuple[float, str]:
        """The most a trial with cheap accuracy ``accuracy`` is credited to reach after the
        full fine-tune, and how that was worked out (for the trial's ``screen_reason``)."""
        m = self.margin
        above = [cheap for cheap, _ in self.pairs if cheap >= accuracy + m]
        if not above:
            return max(self.unpruned_accuracy, accuracy) + m, f"cheap {accuracy:.2f}, no pair at or above it"
        nearest = min(above)
        cheap, full = max(((c, f) for c, f in self.pairs if c <= nearest), key=lambda pair: pair[1])
        return full + m, f"cheap {accuracy:.2f}; pairs up to {nearest:.2f} reached at most {full:.2f}"

    def decide(self, accuracy: float, speedup: float) -> Decision:
        """Promote a trial whose cheap accuracy is ``accuracy`` and speedup ``speedup``?"""
        if len(self.pairs) < _MIN_PAIRS:
            return Decision(True, f"promoted: fewer than {_MIN_PAIRS} calibration pairs")
        reachable, why = self.reachable(accuracy)
        if self.max_drop is not None and self.unpruned_accuracy - reachable > self.max_drop + self.drop_allowance:
            noise = f" (with {self.drop_allowance:.2f} points of validation noise)" if self.drop_allowance else ""
            return Decision(
                False,
                f"screened out: at most {reachable:.2f} reachable ({why}; margin {self.margin:.2f}), "
                f"the constraint needs {self.unpruned_accuracy - self.max_drop - self.drop_allowance:.2f}{noise}",
            )
        if self.speed_only:
            for number, full_accuracy, full_speedup in self.front:
                if full_accuracy >= reachable and full_speedup >= speedup * (1 + _SPEED_TOLERANCE):
                    return Decision(
                        False,
                        f"screened out: trial {number} ({full_accuracy:.2f}, {full_speedup:.2f}x) dominates the most "
                        f"reachable ({reachable:.2f}, {speedup:.2f}x)",
                    )
        return Decision(True, f"promoted: up to {reachable:.2f} reachable at {speedup:.2f}x")


def screening_pays(study: optuna.Study, cfg: SearchConfig, *, before: int | None = None) -> Decision:
    """Whether the next search trial (numbered ``before``, if given: only earlier trials
    count) should be screened: ``promote`` here means "screen it".

    Looks at the last ``cfg.screen_window`` search trials that ran (repeats and failures do
    not count): a trial screened out counts as a saving, and so does one that was not
    screened and ended infeasible and not within noise of the accuracy limit. Screening pays
    while the savings are more than ``cfg.screen_fraction`` of the window (each saves a whole
    fine-tune; each screen costs that fraction of one). ``screen_window = 0`` screens every
    trial.
    """
    window = cfg.screen_window
    if window <= 0:
        return Decision(True, "screened: screen_window = 0 screens every search trial")
    S = optuna.trial.TrialState
    ran = [
        t
        for t in study.get_trials(deepcopy=False, states=(S.COMPLETE, S.PRUNED))
        if t.user_attrs.get("role") == ROLE_SEARCH
        and t.user_attrs.get("fidelity") in (FIDELITY_FULL, FIDELITY_SCREEN)
        and (before is None or t.number < before)
    ]
    if len(ran) < window:
        return Decision(True, f"screened: {len(ran)} of the first {window} search trials have run")
    last = sorted(ran, key=lambda t: t.number)[-window:]
    saved = sum(
        1
        for t in last
        if t.user_attrs.get("fidelity") == FIDELITY_SCREEN
        or ("screen_skipped" in t.user_attrs and not is_feasible(t) and not is_within_noise(t))
    )
    share = saved / window
    verdict = (
        f"{saved} of the last {window} search trials were screened out or, not screened, ended over the "
        f"accuracy limit ({share:.0%}; a screen costs screen_fraction = {cfg.screen_fraction:.0%} of a fine-tune)"
    )
    if share > cfg.screen_fraction:
        return Decision(True, f"screened: {verdict}")
    return Decision(False, f"not screened: {verdict}")
