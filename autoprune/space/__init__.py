"""The search space: a model's prunable groups turned into Optuna parameters.

Modules: ``_units`` (:class:`Unit`, :func:`uniform_schedule`), ``_answers`` (who answers the
sampling code: a trial or a params dict), ``_space`` (:class:`SearchSpace`).

Parameter names are layer paths (``features.0:amount``, ``features.0:method``) so that
Optuna's own tools (dashboard, importances) stay readable. With ``granularity = "block"``
layers sharing a path prefix are tied together; with ``"global"`` one amount and one
method apply everywhere. A fixed choice (a single value in the config) is not a parameter.

Every sampled parameter changes the schedule (define-by-run conditionals): no amount when a
unit's method is ``none``; ``steps`` only with fine-tuning between the steps; ``shape`` only
with several steps, and then never ``oneshot`` (several steps of one-shot would fine-tune the
unpruned model before pruning it); ``importance``, ``norm`` and ``round_to`` only when
something is pruned structurally; ``global_unstructured`` only with at least two unstructured
weights. A parameter that does not apply takes the config's first choice in the Schedule.

One source of truth: :meth:`SearchSpace.suggest` (an Optuna trial),
:meth:`SearchSpace.schedule_from_params` (a params dict) and :meth:`SearchSpace.params_for`
(a Schedule or per-unit amounts -> params) all run the same sampling code, so a trial
enqueued with ``params_for(x)`` samples exactly ``schedule_from_params(params_for(x))``.
"""

from __future__ import annotations

from autoprune.space._space import SearchSpace
from autoprune.space._units import Unit, uniform_schedule

__all__ = ["SearchSpace", "Unit", "uniform_schedule"]
