"""Deployment runtimes as latency backends: ONNX Runtime and torch.compile (inductor).

A schedule should be chosen for the runtime it will ship on: eager overheads that do not
shrink with the channel count, and fusions (BatchNorm folded into convolutions), change how
much of a MACs reduction turns into speed. Both backends check the prepared model's outputs
against eager PyTorch before anything is timed; a mismatch is a :class:`TargetError`.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from autoprune._errors import TargetError
from autoprune._inputs import call_model, map_tensors
from autoprune.evaluation._backends import LatencyBackend, model_on_target, register_backend

if TYPE_CHECKING:
    from autoprune.evaluation._target import Target

__all__ = ["OnnxRuntimeBackend", "CompileBackend", "check_outputs"]

# Largest allowed |prepared - eager| relative to the largest |eager| value, per dtype.
_TOLERANCE = {torch.float32: 1e-3, torch.float16: 2e-2, torch.bfloat16: 5e-2}


def _flat_tensors(output: Any) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        return [t for value in output.values() for t in _flat_tensors(value)]
    if isinstance(output, (tuple, list)):
        return [t for value in output for t in _flat_tensors(value)]
    return []


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_outputs(backend: str, model: nn.Module, got: Any, expected: Any, dtype: torch.dtype) -> None:
    """Raise :class:`TargetError` unless the prepared model's outputs match eager's.

    Outputs are compared tensor by tensor in order (all of them when both sides return the
    same number, else the first); the error is the largest absolute difference relative to
    the largest absolute eager value, allowed up to 1e-3 in float32 (2e-2 float16, 5e-2
    bfloat16).
    """
    got_t, want_t = _flat_tensors(got), _flat_tensors(expected)
    if not got_t or not want_t:
        raise TargetError(f"latency backend {backend!r} returned no tensor for {type(model).__name__}.")
    pairs = list(zip(got_t, want_t, strict=True)) if len(got_t) == len(want_t) else [(got_t[0], want_t[0])]
    tol = _TOLERANCE.get(dtype, 1e-3)
    for i, (g, w) in enumerate(pairs):
        g, w = g.detach().float().cpu(), w.detach().float().cpu()
        if g.shape != w.shape:
            raise TargetError(
                f"latency backend {backend!r} output {i} of {type(model).__name__} has shape {tuple(g.shape)}, "
                f"eager has {tuple(w.shape)}."
            )
        scale = max(float(w.abs().max()), 1e-6) if w.numel() else 1.0
        err = float((g - w).abs().max()) / scale if w.numel() else 0.0
        if not err <= tol:
            raise TargetError(
                f"latency backend {backend!r} output {i} of {type(model).__name__} differs from eager by "
                f"{err:.2e} (relative to its largest value); allowed: {tol:.0e}."
            )


def _eager(runnable: nn.Module, inputs: Any) -> Any:
    with torch.no_grad():
        return call_model(runnable, inputs)


@register_backend("onnxruntime")
class OnnxRuntimeBackend(LatencyBackend):
    """The model as deployed with ONNX Runtime: exported with ``torch.onnx.export`` (the
    TorchScript-based exporter, which needs no ``onnxscript``), run by the CPU execution
    provider with every graph optimisation (``ORT_ENABLE_ALL``: BatchNorm folded, elementwise
    ops fused) and ``intra_op_num_threads`` from the target's ``threads`` (1 inter-op
    thread, sequential execution).

    Name it in the target: ``"cpu:backend=onnxruntime"``. Needs the ``onnxruntime`` extra
    (``pip install "autoprune[onnxruntime]"``); float32 on CPU only.
    """

    def prepare(self, model: nn.Module, inputs: Any, target: Target) -> Callable[[], object]:
        try:
            import onnxruntime as ort
        except ImportError:
            raise TargetError(
                "latency backend 'onnxruntime' needs the onnxruntime package: pip install \"autoprune[onnxruntime]\""
            ) from None
        if target.is_cuda or target.dtype != "float32":
            raise TargetError(
                f"latency backend 'onnxruntime' runs float32 on cpu only, but got target {str(target)!r}; "
                "use device cpu and dtype float32."
            )
        # Exporting traces with ordinary tensors: copies made in inference mode would not do.
        # Gradients on: nn.MultiheadAttention then skips its fused fast path, which has no ONNX op.
        with torch.inference_mode(False), torch.enable_grad():
            runnable = copy.deepcopy(model_on_target(model, target)).eval()
            example = map_tensors(inputs, lambda t: t.clone())
            if isinstance(example, dict):
                names, args, kwargs = list(example), (), example
            else:
                args = tuple(example) if isinstance(example, (tuple, list)) else (example,)
                names, kwargs = [f"input_{i}" for i in range(len(args))], None
            tensors = list(kwargs.values()) if kwargs else list(args)
            try:
                with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
                    warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes
                    path = Path(tmp) / "model.onnx"
                    torch.onnx.export(
                        runnable, args, path, kwargs=kwargs, input_names=names, dynamo=False, do_constant_folding=True
                    )
                    exported = path.read_bytes()
            except Exception as exc:  # noqa: BLE001 - any exporter failure means: not deployable this way
                raise TargetError(
                    f"latency backend 'onnxruntime' cannot export {type(model).__name__}: {_first_line(exc)}"
                ) from None
            expected = _eager(runnable, example)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        if target.threads is not None:
            options.intra_op_num_threads = target.threads
        session = ort.InferenceSession(exported, options, providers=["CPUExecutionProvider"])
        wanted = {i.name for i in session.get_inputs()}  # the exporter drops unused inputs
        feed = {name: t.detach().cpu().numpy() for name, t in zip(names, tensors, strict=True) if name in wanted}
        got = [torch.from_numpy(a) for a in session.run(None, feed)]
        check_outputs("onnxruntime", model, got, expected, torch.float32)
        return lambda: session.run(None, feed)


@register_backend("compile")
class CompileBackend(LatencyBackend):
    """The model compiled by ``torch.compile`` with the inductor backend (C++/OpenMP kernels
    on CPU, Triton on CUDA; it needs a C++ compiler on CPU).

    Name it in the target: ``"cpu:backend=compile"``. Compiling takes seconds to tens of
    seconds per architecture (outside the measurement lock and budget). Each new
    architecture is a recompilation of the same ``forward``; the recompile limit is raised
    while compiling so that a long search never falls back to eager silently.
    """

    def prepare(self, model: nn.Module, inputs: Any, target: Target) -> Callable[[], object]:
        if not target.is_cuda and not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
            raise TargetError(
                "latency backend 'compile' needs a C++ compiler for inductor on cpu (none of c++, g++, clang++ "
                "is on PATH); install one or use backend=torchscript."
            )
        import torch._dynamo

        runnable = copy.deepcopy(model_on_target(model, target)).eval()
        compiled = cast(nn.Module, torch.compile(runnable, backend="inductor", dynamic=False))
        expected = _eager(runnable, inputs)
        try:
            with torch._dynamo.config.patch(recompile_limit=1 << 20, accumulated_recompile_limit=1 << 20):
                got = call_model(compiled, inputs)  # compiles here
        except Exception as exc:  # noqa: BLE001 - any compiler failure means: not deployable this way
            raise TargetError(
                f"latency backend 'compile' cannot compile {type(model).__name__} on this machine: {_first_line(exc)}"
            ) from None
        check_outputs("compile", model, got, expected, target.torch_dtype)
        return lambda: call_model(compiled, inputs)
