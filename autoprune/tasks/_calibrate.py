"""BatchNorm re-estimation: running statistics measured again after pruning, no gradient step."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from autoprune._inputs import call_model

__all__ = ["reestimate_batchnorm"]


def reestimate_batchnorm(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    call: Callable[[nn.Module, Any], Any] = call_model,
) -> nn.Module:
    """Re-estimate the running mean and variance of every BatchNorm layer of ``model`` in place.

    Pruning changes what each channel sees, so the statistics recorded in training no longer
    fit. This resets them and forwards ``batches`` with the BatchNorm layers in train mode and
    ``momentum=None`` (a cumulative average over the batches, independent of their order),
    under ``torch.no_grad()``: no weight changes. Only the BatchNorm layers switch to train
    mode (dropout stays as it was); every module's mode and momentum are restored afterwards.

    Args:
        model: the model, changed in place.
        batches: inputs, each passed as ``call(model, batch)`` (already on the model's device).
        call: how a batch is passed to the model; by default a tensor as ``model(x)``, a tuple
            as ``model(*x)``, a dict as ``model(**x)``.

    Returns:
        ``model`` (for chaining).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from autoprune.tasks import reestimate_batchnorm
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)).eval()
        >>> _ = reestimate_batchnorm(model, [torch.randn(8, 1, 6, 6) + 3.0])
        >>> bool(model[1].running_mean.mean() != 0), model.training
        (True, False)
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return model
    modes = {m: m.training for m in norms}
    momenta = {m: m.momentum for m in norms}
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        with torch.no_grad():
            for batch in batches:
                call(model, batch)
    finally:
        for m in norms:
            m.momentum = momenta[m]
            m.train(modes[m])
    return model
