"""Cheap screening: which search trials get the full fine-tune.

Every trial except the unpruned one is first pruned with a short fine-tune per step
(``screen_fraction`` of the schedule's) and BatchNorm re-estimated; its validation accuracy
then is a cheap estimate, and its speedup is already the final one (the architecture does
not depend on how long it is fine-tuned). References are always promoted, so every study
holds pairs (cheap accuracy, full accuracy): how much the full fine-tune recovers on this
task. What a full fine-tune recovers grows with how much the cheap stage lost, so the rule
uses the largest share of the cheap drop that any pair recovered (pairs that lost at least
one point; all of it when none did), plus a margin: the configured floor plus the spread of
the pairs around the typical share (the task's fine-tune noise). A search trial is promoted
when, so credited, it could still meet the accuracy constraint and is not dominated by a
full-fidelity trial already measured. The rule errs toward promoting: a wrongly promoted trial costs one fine-tune, a
wrongly screened one can cost a point of the front.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna

from autoprune.config import SearchConfig
from autoprune.study.keys import FIDELITY_FULL

__all__ = ["Decision", "Screening"]

_MIN_PAIRS = 2
_SIGNIFICANT_DROP = 1.0  # points the cheap stage must lose for a pair to tell a recovered share
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
        front: ``(number, accuracy, speedup)`` of feasible full-fidelity trials.
        baseline_accuracy: the unpruned model's validation accuracy.
        max_drop: the accuracy constraint in points, if the study has one.
        margin: the configured floor of the margin, in points.
        speed_only: whether the front check applies (objectives accuracy and latency only).
    """

    pairs: Sequence[tuple[float, float]]
    front: Sequence[tuple[int, float, float]]
    baseline_accuracy: float
    max_drop: float | None
    margin: float
    speed_only: bool = True

    @classmethod
    def from_study(cls, study: optuna.Study, cfg: SearchConfig, baseline: Mapping[str, Any]) -> Screening:
        done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        full = [t for t in done if t.user_attrs.get("fidelity") == FIDELITY_FULL and "accuracy" in t.user_attrs]
        pairs = [
            (float(t.user_attrs["screen_accuracy"]), float(t.user_attrs["accuracy"]))
            for t in full
            if "screen_accuracy" in t.user_attrs
        ]
        front = [
            (t.number, float(t.user_attrs["accuracy"]), float(t.user_attrs.get("speedup", 0.0)))
            for t in full
            if t.user_attrs.get("feasible", True)
        ]
        max_drop = cfg.constraints.get("max_accuracy_drop")
        return cls(
            pairs=pairs,
            front=front,
            baseline_accuracy=float(baseline["accuracy"]),
            max_drop=float(max_drop) if max_drop is not None else None,
            margin=cfg.screen_margin,
            speed_only=set(cfg.objectives) == {"accuracy", "latency"},
        )

    @property
    def recovery(self) -> tuple[float, float]:
        """The largest share of the cheap stage's drop that a full fine-tune recovered (in
        [0, 1]), and the margin in points to add to the credit."""
        drops = [(self.baseline_accuracy - cheap, full - cheap) for cheap, full in self.pairs]
        shares = [gain / drop for drop, gain in drops if drop >= _SIGNIFICANT_DROP]
        best = min(1.0, max(0.0, max(shares))) if shares else 1.0
        typical = statistics.median(shares) if shares else 1.0
        residuals = [gain - typical * max(drop, 0.0) for drop, gain in drops]
        noise = statistics.pstdev(residuals) if len(residuals) >= 3 else 0.0
        return best, self.margin + noise

    def decide(self, accuracy: float, speedup: float) -> Decision:
        """Promote a trial whose cheap accuracy is ``accuracy`` and speedup ``speedup``?"""
        if len(self.pairs) < _MIN_PAIRS:
            return Decision(True, f"promoted: fewer than {_MIN_PAIRS} calibration pairs")
        share, margin = self.recovery
        best_gain = share * max(self.baseline_accuracy - accuracy, 0.0)
        reachable = accuracy + best_gain + margin
        if self.max_drop is not None and self.baseline_accuracy - reachable > self.max_drop:
            return Decision(
                False,
                f"screened out: at most {reachable:.2f} reachable (cheap {accuracy:.2f} + recovery {best_gain:.2f} "
                f"+ margin {margin:.2f}), the constraint needs {self.baseline_accuracy - self.max_drop:.2f}",
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
