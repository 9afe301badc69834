"""A unit of the search (layers sharing one amount and one method) and the uniform schedule.

``ap.uniform_schedule`` lives here because it joins the preflight and the Schedule: the
Schedule is upstream of the preflight and must not import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from autoprune.preflight import LayerInfo
from autoprune.prunable import prunable_layers
from autoprune.schedule import Method, Schedule, register_preflight

__all__ = ["Unit", "uniform_schedule"]


@dataclass(frozen=True)
class Unit:
    """Layers that share one amount and one method in the search."""

    key: str
    layers: tuple[LayerInfo, ...]
    methods: tuple[str, ...]
    max_amount: float

    def supports(self, method: str) -> bool:
        """Whether ``method`` is a choice of this unit and reaches at least one of its layers."""
        return method in self.methods and any(method in info.methods for info in self.layers)


def uniform_schedule(
    model: Any, example_inputs: Any, *, method: Method = "structured", amount: float = 0.5, **options: Any
) -> Schedule:
    """The same plan on every layer of ``model`` that supports ``method`` (the hand-made
    baseline): the preflight, then :meth:`Schedule.uniform`. ``ap.uniform_schedule(model, x,
    amount=0.5)`` and ``ap.Schedule.uniform(model, x, amount=0.5)`` give the same Schedule.

    Example:
        >>> import autoprune as ap
        >>> from autoprune.testing import models as zoo
        >>> model, x = zoo.get_model("cnn")
        >>> uniform_schedule(model, x, amount=0.5).layers["features.0.0"]
        LayerPlan(method='structured', amount=0.5, norm=1)
    """
    return Schedule.uniform(prunable_layers(model, example_inputs), method=method, amount=amount, **options)


# Schedule.uniform(model, example_inputs) runs the preflight through this hook: the Schedule is
# upstream of the preflight and must not import it; this module, which imports both, connects them.
register_preflight(prunable_layers)
