"""The evaluator: accuracy, size, MACs and latency of a model on a target.

- :func:`evaluate` measures everything and returns a :class:`Metrics` record.
- :class:`Target` says where latency is measured (``"cpu:threads=1,batch=8"``).
- :func:`measure_latency` times a model; measurements on one machine take turns through a
  machine-wide file lock, and training loops wrap each step in :func:`training_gate` to
  pause while a measurement runs (and keep a measurement from overlapping a step).
- :func:`measure_speedup` and :class:`SpeedupMeter` time a model in alternation with a
  reference (the unpruned model), so machine drift cancels; they return a :class:`Speedup`
  with its 95% interval and whether it converged.
- :class:`LatencyCache` keyed by :func:`architecture_signature` measures each architecture
  once; :func:`cached_speedup` reuses a stored speedup only when its interval is tight.
- :func:`size_stats` and :func:`count_macs` count parameters, bytes and MACs.
- :class:`LatencyBackend` and :func:`register_backend`: the extension point for targets that
  run models with other (for example sparse) kernels. Registered: ``dense`` (eager),
  ``torchscript``, ``compile`` (torch.compile/inductor) and ``onnxruntime``.
"""

from __future__ import annotations

from autoprune.evaluation._backends import (
    DenseBackend,
    LatencyBackend,
    backend_names,
    get_backend,
    register_backend,
)
from autoprune.evaluation._cache import LatencyCache, cached_speedup, speedup_key
from autoprune.evaluation._evaluate import derived_metrics, drop_standard_error, evaluate, sample_mean
from autoprune.evaluation._latency import (
    LOCK_ENV,
    LatencyResult,
    TrainingGate,
    default_lock_path,
    measure_latency,
    timing_conditions,
    training_gate,
)
from autoprune.evaluation._macs import count_macs
from autoprune.evaluation._metrics import METRIC_NAMES, Metrics
from autoprune.evaluation._runtimes import CompileBackend, OnnxRuntimeBackend, check_outputs
from autoprune.evaluation._signature import architecture_signature
from autoprune.evaluation._size import size_stats, tensor_bytes
from autoprune.evaluation._speedup import Speedup, SpeedupMeter, measure_speedup, median_interval
from autoprune.evaluation._target import DTYPES, Target

__all__ = [
    "DTYPES",
    "LOCK_ENV",
    "METRIC_NAMES",
    "CompileBackend",
    "DenseBackend",
    "LatencyBackend",
    "LatencyCache",
    "LatencyResult",
    "Metrics",
    "OnnxRuntimeBackend",
    "Speedup",
    "SpeedupMeter",
    "Target",
    "TrainingGate",
    "architecture_signature",
    "backend_names",
    "cached_speedup",
    "check_outputs",
    "count_macs",
    "default_lock_path",
    "derived_metrics",
    "drop_standard_error",
    "evaluate",
    "get_backend",
    "measure_latency",
    "measure_speedup",
    "timing_conditions",
    "median_interval",
    "register_backend",
    "sample_mean",
    "size_stats",
    "speedup_key",
    "tensor_bytes",
    "training_gate",
]
