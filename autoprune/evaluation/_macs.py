"""MACs from PyTorch's own FLOP counter (``torch.utils.flop_counter.FlopCounterMode``).

The counter counts the matrix products (convolutions, linear layers, matmuls, attention);
elementwise ops, normalisation and pooling are not counted, as is usual for MACs. MACs are
``FLOPs / 2``. They are counted for ONE SAMPLE (the first row of the example batch), so the
number does not depend on the batch size. Unstructured zeros do not reduce MACs: the count
is of the dense computation that dense kernels perform.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils import flop_counter

from autoprune._inputs import call_model, resize_batch

__all__ = ["count_macs"]


def _custom_formulas() -> dict[Any, Any]:
    # On CPU, scaled_dot_product_attention dispatches to an op the counter does not know;
    # it is the same computation as the flash-attention op, so reuse torch's formula.
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is None:
        return {}

    def cpu_sdpa_flop(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any) -> int:
        return int(flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape))

    return {op: cpu_sdpa_flop}


def count_macs(model: nn.Module, example_inputs: Any) -> int:
    """Multiply-accumulates of one forward pass of ONE sample (the first of the example batch).

    The model runs once in eval mode under ``torch.no_grad()``, with the fused fast path of
    ``nn.MultiheadAttention`` turned off so that its projections are counted; modes and the
    fast-path setting are restored afterwards.

    Example:
        >>> count_macs(nn.Linear(20, 30), torch.randn(4, 20))
        600
    """
    modes = {m: m.training for m in model.modules()}
    mha = getattr(torch.backends, "mha", None)
    fastpath = mha.get_fastpath_enabled() if mha is not None else None
    counter = flop_counter.FlopCounterMode(display=False, custom_mapping=_custom_formulas())
    try:
        model.eval()
        if mha is not None:
            mha.set_fastpath_enabled(False)
        with torch.no_grad(), counter:
            call_model(model, resize_batch(example_inputs, 1))
    finally:
        if mha is not None and fastpath is not None:
            mha.set_fastpath_enabled(fastpath)
        for module, training in modes.items():
            module.training = training
    return int(counter.get_total_flops()) // 2
