"""What a study stores about its unpruned model, readable by every stage: the allocation and
structure searches of ``autoprune.lm`` write and read it as the study stage does.

``unpruned`` (study user attribute): the unpruned model's metrics; ``unpruned_trial``: the
number of the trial that measured them. Studies made before these names store ``baseline``
and ``baseline_trial``; both are still read. :mod:`autoprune.study.keys` documents the rest.
"""

from __future__ import annotations

from typing import Any

__all__ = ["UNPRUNED", "UNPRUNED_TRIAL", "unpruned_metrics", "unpruned_trial_number"]

UNPRUNED = "unpruned"
UNPRUNED_TRIAL = "unpruned_trial"
_OLDER = {UNPRUNED: "baseline", UNPRUNED_TRIAL: "baseline_trial"}


def unpruned_metrics(study: Any) -> dict[str, Any]:
    """The unpruned model's metrics as ``study`` stored them (a copy; ``{}`` until measured)."""
    attrs = study.user_attrs
    stored = attrs.get(UNPRUNED, attrs.get(_OLDER[UNPRUNED]))
    return dict(stored) if isinstance(stored, dict) else {}


def unpruned_trial_number(study: Any) -> int | None:
    """The number of the trial that measured the unpruned model, or None before it is published."""
    attrs = study.user_attrs
    number = attrs.get(UNPRUNED_TRIAL, attrs.get(_OLDER[UNPRUNED_TRIAL]))
    return number if isinstance(number, int) and not isinstance(number, bool) else None
