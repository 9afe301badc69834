"""What every trial of one process shares, built once per process (:class:`SearchSetup`),
and the settings that the study derives from its config: the space that can pay
(:func:`paying_space`) and the target it times on (:func:`study_target`).

The objective, the references and ``autoprune layers`` read these; none of them is
imported back here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import optuna
import torch

from autoprune._cpus import usable_cpus
from autoprune._errors import AutopruneError, ConfigError
from autoprune._lock import MachineLock
from autoprune.config import SearchConfig, SpaceConfig
from autoprune.evaluation import SpeedupMeter, Target, get_backend
from autoprune.preflight import LayerInfo
from autoprune.prunable import prunable_layers
from autoprune.sensitivity import Sensitivity
from autoprune.space import SearchSpace
from autoprune.tasks import Task, in_percent

__all__ = ["SearchSetup", "paying_space", "study_target"]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchSetup:
    """What every trial of one process shares, built once per process: the task, the
    config, the preflight's layers and the SearchSpace over them.

    ``space`` is per unit: the sensitivity scan and ``autoprune layers`` read its units.
    With ``space.parametrization = "sensitivity"`` the trials sample another space built on
    the study's scan, which exists only once the unpruned trial has run:
    :meth:`search_space` builds it from the study (once per process).
    """

    task: Task
    cfg: SearchConfig
    layers: list[LayerInfo]
    space: SearchSpace
    scale_notice: str | None = None  # set when the task scores fractions and is reported x100
    space_notice: str | None = None  # set when a configured method is left out (it cannot pay)
    _searched: dict[str, SearchSpace] = field(default_factory=dict, compare=False, repr=False)
    _meters: dict[str, SpeedupMeter] = field(default_factory=dict, compare=False, repr=False)

    def meter(self, target: Target) -> SpeedupMeter:
        """The unpruned model prepared on ``target`` to time trials against, once per process:
        every trial this process runs shares it, and with it one reference time
        (:meth:`SpeedupMeter.reference_ms`), measured on this host in this sitting."""
        key = str(target)
        if key not in self._meters:
            self._meters[key] = SpeedupMeter(self.task.model, self.task.example_inputs, target)
        return self._meters[key]

    def search_space(self, study: optuna.Study) -> SearchSpace:
        """The space the study's trials sample: ``space``, or with the sensitivity
        parametrization the same units over the study's stored scan."""
        if self.cfg.space.parametrization == "unit":
            return self.space
        if "space" not in self._searched:
            data = study.user_attrs.get("sensitivity")
            if data is None:
                raise AutopruneError("space.parametrization = 'sensitivity' but the study holds no sensitivity scan yet")
            config = replace(self.space.config, parametrization=self.cfg.space.parametrization)
            self._searched["space"] = SearchSpace(self.layers, config, sensitivity=Sensitivity.from_dict(data))
        return self._searched["space"]

    @classmethod
    def build(cls, task: Task, cfg: SearchConfig, lock: MachineLock) -> SearchSetup:
        """Run the preflight (a trace of the model: busy work, like training) once, and put
        a task that scores fractions into percent (a constraint in points then means what
        its help says)."""
        if cfg.space.distill != [False] and task.distill_fine_tune is None:
            raise ConfigError(
                f"invalid space.distill = {cfg.space.distill}; allowed for task {task.name!r}: [false] "
                "(it has no distill_fine_tune; Task.from_loaders(..., distill=(weight, temperature)) gives one)"
            )
        notice = None
        with lock.busy():
            layers = prunable_layers(task.model, task.example_inputs, output=task.output)
            if task.scale != "percent":
                with torch.inference_mode():
                    unpruned = float(task.evaluate(task.model))
                task, notice = in_percent(task, unpruned)
                if notice is not None:
                    _logger.warning(notice)
        space_cfg, space_notice = paying_space(cfg)
        if space_notice is not None:
            _logger.warning(space_notice)
        # the per-unit space (the scan's units); the sensitivity one is built on the scan
        space_cfg = replace(space_cfg, parametrization="unit")
        return cls(task, cfg, layers, SearchSpace(layers, space_cfg), notice, space_notice)


def paying_space(cfg: SearchConfig) -> tuple[SpaceConfig, str | None]:
    """``cfg.space`` without the choices that cannot improve any objective, and a notice
    saying what was left out (None when nothing was).

    Unstructured pruning only zeroes weights: it cannot make a dense kernel faster or a
    model's MACs smaller, so it is a choice only when an objective or constraint counts
    zeros (``size``, ``params``, ``max_size_bytes``) or the target's backend has sparse
    kernels. Otherwise every trial that picks it would spend its fine-tune on accuracy lost
    for nothing. A config that offers no structured alternative keeps it (it asked for it).
    """
    space = cfg.space
    if "unstructured" not in space.methods or "structured" not in space.methods:
        return space, None
    counts_zeros = bool({"size", "params"} & set(cfg.objectives)) or "max_size_bytes" in cfg.constraints
    backend = Target.parse(cfg.target).backend
    if counts_zeros or get_backend(backend).sparse_kernels:
        return space, None
    methods = [m for m in space.methods if m != "unstructured"]
    notice = (
        f"unstructured pruning is left out of the search: the objectives {cfg.objectives} and constraints count no "
        f"zeros, and the target's backend {backend!r} runs zeroed weights at full cost (add 'size' or 'params' to "
        "the objectives to search it)"
    )
    return replace(space, methods=methods), notice


def study_target(cfg: SearchConfig) -> Target:
    """The target a study times on: ``cfg.target``, on a CPU with every core this process may
    use (:func:`~autoprune._cpus.usable_cpus`) when it names no thread count."""
    target = Target.parse(cfg.target)
    if target.threads is None and target.device == "cpu":
        target = replace(target, threads=usable_cpus())
    return target
