"""Cheap before expensive: what each unit costs to prune, and where pruning should go.

:func:`scan_sensitivity` prunes every unit of a :class:`~autoprune.space.SearchSpace` alone at
a few amounts, re-estimates the BatchNorm statistics on a few training batches (``calibrate``;
the adaptive-BN evaluation of EagleEye, Li et al. 2020, which ranks pruned candidates close
to how they rank after fine-tuning), scores it with ``evaluate`` and records the MACs it
removes (and, with ``speedup``, how much faster it is). No fine-tuning: one
``apply_schedule`` plus one calibrate and one evaluate per point.

:func:`allocate` spreads pruning by that sensitivity for a global target, greedily: it
repeatedly takes the (unit, next amount) step that loses the least accuracy per MAC (or
latency) saved, reading the interpolated curves, until the target reduction is reached (in
the spirit of AIMET's greedy compression-ratio selection and NetAdapt). The per-unit amounts
it returns become a warm-start trial with :meth:`SearchSpace.params_for`.

:func:`screen` scores a schedule cheaply (a short fine-tune, BatchNorm re-estimated) so that
a study can spend the full fine-tune only on promising candidates.
"""

from autoprune.sensitivity._allocate import allocate, allocations, greedy_path, macs_meter, sensitivity_allocations
from autoprune.sensitivity._result import RESOURCES, SENSITIVITY_VERSION, Curve, Sensitivity
from autoprune.sensitivity._scan import pruning_only, scan_sensitivity, schedule_alone
from autoprune.sensitivity._screen import screen

__all__ = [
    "Curve",
    "Sensitivity",
    "allocate",
    "allocations",
    "greedy_path",
    "macs_meter",
    "pruning_only",
    "scan_sensitivity",
    "schedule_alone",
    "screen",
    "sensitivity_allocations",
    "RESOURCES",
    "SENSITIVITY_VERSION",
]
