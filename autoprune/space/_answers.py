"""Who answers the sampling code's questions: an Optuna trial, or a params dict (lenient for
enqueued references, strict for a user's params), recording the parameters a trial would hold."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import optuna

from autoprune._errors import ScheduleError


# ---------------------------------------------------------------------------- answering the sampler
class _Ask:
    """What the sampling code asks: Optuna's three suggest calls, answered by a trial or a dict."""

    def categorical(self, name: str, choices: Sequence[Any]) -> Any:
        raise NotImplementedError

    def floating(self, name: str, low: float, high: float, step: float) -> float:
        raise NotImplementedError

    def integer(self, name: str, low: int, high: int) -> int:
        raise NotImplementedError


class _TrialAsk(_Ask):
    def __init__(self, trial: optuna.trial.BaseTrial) -> None:
        self.trial = trial

    def categorical(self, name: str, choices: Sequence[Any]) -> Any:
        if len(choices) == 1:
            return choices[0]  # a fixed choice is not a parameter
        return self.trial.suggest_categorical(name, list(choices))

    def floating(self, name: str, low: float, high: float, step: float) -> float:
        if high <= low:
            return low
        return round(self.trial.suggest_float(name, low, high, step=step), 6)

    def integer(self, name: str, low: int, high: int) -> int:
        return self.trial.suggest_int(name, low, high)


class _Prefer(_Ask):
    """Answers from ``prefs`` and records the parameters a trial would hold. Lenient: a
    missing value takes the first choice (the lowest number), a number goes on the grid.
    Strict: missing, off-grid or unknown values are errors."""

    def __init__(self, prefs: Mapping[str, Any], *, strict: bool) -> None:
        self.prefs = prefs
        self.strict = strict
        self.params: dict[str, Any] = {}

    def _value(self, name: str, default: Any) -> Any:
        if name in self.prefs:
            return self.prefs[name]
        if self.strict:
            raise ScheduleError(f"parameter {name!r} applies to this schedule but is missing from the params.")
        return default

    def categorical(self, name: str, choices: Sequence[Any]) -> Any:
        if len(choices) == 1:
            return choices[0]
        value = self._value(name, choices[0])
        # True == 1 in Python: compare types too, or `round_to=True` would pass as 1
        if not any(value == c and type(value) is type(c) for c in choices):
            raise ScheduleError(f"`{name}` must be one of {list(choices)} in this search space, but got {value!r}.")
        self.params[name] = value
        return value

    def floating(self, name: str, low: float, high: float, step: float) -> float:
        if high <= low:
            return low
        value = self._value(name, low)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ScheduleError(f"`{name}` must be a number, but got {value!r}.")
        snapped = round(low + round((value - low) / step) * step, 6)
        snapped = round(min(max(snapped, low), high), 6)
        if self.strict and abs(snapped - value) > 1e-6:
            raise ScheduleError(
                f"`{low} <= {name} <= {high}` in steps of {step} must hold in this search space, but got {value!r}."
            )
        self.params[name] = snapped
        return snapped

    def integer(self, name: str, low: int, high: int) -> int:
        value = self._value(name, low)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ScheduleError(f"`{low} <= {name} <= {high}` must hold in this search space, but got {value!r}.")
        self.params[name] = value
        return value


def _on_grid(value: float, step: float) -> float:
    return round(round(value / step) * step, 6)
