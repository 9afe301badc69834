"""Latency backends: the extension point for targets that run models differently.

The default ``"dense"`` backend times the model as PyTorch runs it: dense kernels, where an
unstructured zero costs as much as any other weight. So on a dense target unstructured
pruning pays in size only, and the search learns that from the measured latency.

A target with sparse kernels (a sparse inference runtime, semi-structured 2:4 kernels, a
compiled graph) plugs in as a backend: subclass :class:`LatencyBackend`, register it under a
name, and name it in the target (``Target(backend="my-sparse")`` or ``"cpu:backend=my-sparse"``).
The timing loop, the lock, warm-up and statistics stay the same for every backend.
"""

from __future__ import annotations

import abc
import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import nn

from autoprune._errors import TargetError
from autoprune._inputs import call_model, map_tensors

if TYPE_CHECKING:
    from autoprune.evaluation._target import Target

__all__ = ["LatencyBackend", "DenseBackend", "register_backend", "get_backend", "backend_names"]

_B = TypeVar("_B", bound="type[LatencyBackend]")
_REGISTRY: dict[str, type[LatencyBackend]] = {}


class LatencyBackend(abc.ABC):
    """Turns a model into something the latency timer can call.

    Subclasses implement :meth:`prepare`; :meth:`signature` is an optional hook.

    Example (a sketch of a backend with sparse kernels)::

        @ap.evaluation.register_backend("csr-linear")
        class CsrLinear(ap.evaluation.LatencyBackend):
            def prepare(self, model, inputs, target):
                model = to_sparse_runtime(copy.deepcopy(model))  # your conversion
                return lambda: model(inputs)

            def signature(self, model):
                # zeros change latency here, so they must change the cache key too
                return str([int(p.count_nonzero()) for p in model.parameters()])

            sparse_kernels = True  # zeros make it faster: the search offers unstructured pruning
    """

    #: Whether zeroed weights make this backend faster. When no backend of the target does and
    #: no objective or constraint counts zeros, the search leaves unstructured pruning out:
    #: it could only cost accuracy.
    sparse_kernels: bool = False

    @abc.abstractmethod
    def prepare(self, model: nn.Module, inputs: Any, target: Target) -> Callable[[], object]:
        """Return a function that runs one forward pass, to be timed.

        Args:
            model: the model, in eval mode. Do not modify it: copy it to convert it.
            inputs: the example inputs, already resized to the target's batch size, moved
                to its device and cast to its dtype.
            target: the target being measured.
        """

    def signature(self, model: nn.Module) -> str:
        """Extra text for the latency cache key: what, besides the architecture, changes
        latency with this backend. Dense kernels ignore zeros, so the default is empty."""
        return ""


def register_backend(name: str) -> Callable[[_B], _B]:
    """Class decorator that registers a :class:`LatencyBackend` under ``name``."""

    def decorator(cls: _B) -> _B:
        if not (isinstance(cls, type) and issubclass(cls, LatencyBackend)):
            raise TypeError(f"register_backend({name!r}) expects a LatencyBackend subclass, but got {cls!r}.")
        _REGISTRY[name] = cls
        return cls

    return decorator


def backend_names() -> list[str]:
    """Names of the registered latency backends."""
    return list(_REGISTRY)


def get_backend(name: str) -> LatencyBackend:
    """A new instance of the backend registered under ``name``."""
    if name not in _REGISTRY:
        raise TargetError(f"unknown latency backend {name!r}; registered: {', '.join(_REGISTRY)}.")
    return _REGISTRY[name]()


def _on(t: torch.Tensor, device: torch.device, dtype: torch.dtype) -> bool:
    if t.device.type != device.type or (device.index is not None and t.device.index != device.index):
        return False
    return not t.is_floating_point() or t.dtype == dtype


def model_on_target(model: nn.Module, target: Target) -> nn.Module:
    """The model itself when it already lives on the target's device and dtype, else a copy there."""
    device, dtype = target.torch_device, target.torch_dtype
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    tensors = [*model.parameters(), *model.buffers()]
    if all(_on(t, device, dtype) for t in tensors):
        return model
    # Module.to casts floating tensors only, so integer buffers keep their dtype.
    return copy.deepcopy(model).to(device=device, dtype=dtype)


@register_backend("dense")
class DenseBackend(LatencyBackend):
    """Plain PyTorch on the target's device and dtype (the default)."""

    def prepare(self, model: nn.Module, inputs: Any, target: Target) -> Callable[[], object]:
        runnable = model_on_target(model, target).eval()
        return lambda: call_model(runnable, inputs)


@register_backend("torchscript")
class TorchScriptBackend(LatencyBackend):
    """The model as deployed with TorchScript: traced, frozen and optimised for inference
    (``torch.jit.trace`` -> ``torch.jit.freeze`` -> ``torch.jit.optimize_for_inference``),
    which folds BatchNorm into the convolutions and fuses elementwise ops. Eager overheads
    that do not shrink with the channel count are gone, so structured pruning's measured
    speedup follows its MACs reduction more closely (``scripts/bench_speedup.py --backend``).

    Name it in the target: ``"cpu:backend=torchscript"``. A model that cannot be traced is a
    :class:`~autoprune.TargetError` that names the tracer's complaint. Tracing happens
    before the measurement lock is taken, and the frozen module is timed like any other.
    torch 2.13 marks TorchScript deprecated in favour of ``torch.compile``/``torch.export``;
    it still ships and freezes in well under a second, where compiling each trial's
    architecture with inductor would cost tens of seconds per trial.
    """

    def prepare(self, model: nn.Module, inputs: Any, target: Target) -> Callable[[], object]:
        import warnings

        runnable = copy.deepcopy(model_on_target(model, target)).eval()
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            # torch 2.13 marks TorchScript deprecated (the docstring says so); tracer
            # warnings about Python values are the tracer's normal output for attention
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 says it with FutureWarning
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            # tracing records ordinary tensors (the timing loop's inputs are inference tensors)
            example = map_tensors(inputs, lambda t: t.clone())
            try:
                if isinstance(example, dict):
                    traced = torch.jit.trace(runnable, example_kwarg_inputs=example, strict=False)
                else:
                    args = tuple(example) if isinstance(example, (tuple, list)) else (example,)
                    traced = torch.jit.trace(runnable, args, strict=False, check_trace=False)
                frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
            except Exception as exc:  # noqa: BLE001 - any tracer failure means: not deployable this way
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise TargetError(
                    f"latency backend 'torchscript' cannot trace {type(model).__name__}: {first}; "
                    "use the 'dense' backend (the default) for this model"
                ) from None
        return lambda: call_model(frozen, inputs)
