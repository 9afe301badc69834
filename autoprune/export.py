"""Saving a pruned model without pickle, and rebuilding it from an unpruned one.

A saved model is a folder of plain files:

- ``weights.pt``: the state dict, a plain ``dict[str, Tensor]`` written by ``torch.save``
  and read back with ``torch.load(weights_only=True)``;
- ``schedule.json``: the Schedule that pruned the model;
- ``architecture.json``: every tensor's shape and dtype, per-layer shapes, the parameter
  count, MACs, the example inputs' shapes and the torch/autoprune versions;
- ``metrics.json``: whatever metrics the caller gives (for ``autoprune apply``, the trial's);
- ``model.onnx`` when asked for (needs the ``onnx`` package).

:func:`load_pruned` never unpickles a module: it builds a fresh unpruned model, re-applies
the schedule (channel counts depend only on the schedule, so the architecture comes out the
same whatever the weights), checks every tensor shape, and loads the weights.

Example:
    >>> path = save_pruned(pruned, "out/", schedule=schedule, example_inputs=x)  # doctest: +SKIP
    >>> model = load_pruned("out/", MyNet)  # any fresh, unpruned MyNet: its weights are replaced  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import math
import pickle
import re
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune._errors import ArchitectureMismatchError, ExportError, UnsafeWeightsError
from autoprune.evaluation import count_macs, size_stats
from autoprune.executor import apply_schedule
from autoprune.schedule import Schedule

__all__ = [
    "ARCHITECTURE_FILE",
    "ArchitectureMismatchError",
    "ExportError",
    "FORMAT_VERSION",
    "METRICS_FILE",
    "ONNX_FILE",
    "SCHEDULE_FILE",
    "UnsafeWeightsError",
    "WEIGHTS_FILE",
    "architecture",
    "load_pruned",
    "save_pruned",
]

_logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.pt"
SCHEDULE_FILE = "schedule.json"
METRICS_FILE = "metrics.json"
ARCHITECTURE_FILE = "architecture.json"
ONNX_FILE = "model.onnx"


# ---------------------------------------------------------------------------- helpers
def _count_macs(model: nn.Module, example_inputs: Any) -> int:
    """MACs of one forward pass, counted as the evaluator counts them (per sample)."""
    return int(count_macs(model, example_inputs))


def _input_spec(example_inputs: Any) -> dict[str, Any] | None:
    """Shapes and dtypes of the example inputs (None when they are not tensors)."""
    if isinstance(example_inputs, torch.Tensor):
        return {"type": "tensor", "shape": list(example_inputs.shape), "dtype": str(example_inputs.dtype)}
    if isinstance(example_inputs, (tuple, list)):
        items = [_input_spec(x) for x in example_inputs]
        if any(i is None for i in items):
            return None
        return {"type": "tuple", "items": items}
    if isinstance(example_inputs, Mapping):
        entries = {str(k): _input_spec(v) for k, v in example_inputs.items()}
        if any(i is None for i in entries.values()):
            return None
        return {"type": "dict", "items": entries}
    return None


def _dtype(name: Any) -> torch.dtype:
    # Only a known torch dtype name is accepted; nothing from the file is evaluated.
    dtype = getattr(torch, str(name).removeprefix("torch."), None) if isinstance(name, str) else None
    if not isinstance(dtype, torch.dtype):
        raise ExportError(f"{ARCHITECTURE_FILE}: unknown dtype {name!r} in example_inputs")
    return dtype


def _zeros_from_spec(spec: Any, device: torch.device) -> Any:
    if not isinstance(spec, Mapping):
        raise ExportError(f"{ARCHITECTURE_FILE}: malformed example_inputs entry {spec!r}")
    kind = spec.get("type")
    if kind == "tensor":
        shape = spec.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ExportError(f"{ARCHITECTURE_FILE}: malformed example input shape {shape!r}")
        return torch.zeros(shape, dtype=_dtype(spec.get("dtype")), device=device)
    if kind == "tuple":
        return tuple(_zeros_from_spec(s, device) for s in spec.get("items", []))
    if kind == "dict":
        return {k: _zeros_from_spec(s, device) for k, s in dict(spec.get("items", {})).items()}
    raise ExportError(f"{ARCHITECTURE_FILE}: unknown example input type {kind!r}")


def _layers(model: nn.Module) -> dict[str, Any]:
    """Per-layer type and the shapes of its own parameters and buffers (for humans)."""
    out: dict[str, Any] = {}
    for name, module in model.named_modules():
        tensors = {n: list(t.shape) for n, t in module.named_parameters(recurse=False)}
        tensors.update({n: list(t.shape) for n, t in module.named_buffers(recurse=False) if t is not None})
        if tensors:
            out[name] = {"type": type(module).__name__, "tensors": tensors}
    return out


def architecture(model: nn.Module, example_inputs: Any = None) -> dict[str, Any]:
    """The architecture record written to ``architecture.json``.

    Keys: ``format_version``, ``model_class`` (informational), ``params``,
    ``nonzero_params``, ``dense_bytes``, ``sparse_bytes``, ``macs`` (per sample; None without
    example inputs), all counted as the evaluator counts them, ``example_inputs`` (shapes and
    dtypes), ``tensors`` (state-dict key -> shape and dtype), ``layers`` (per
    layer: type and tensor shapes), ``torch_version``, ``autoprune_version``.
    """
    from autoprune import __version__  # set before autoprune/__init__.py imports anything

    state = model.state_dict()
    return {
        "format_version": FORMAT_VERSION,
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        **size_stats(model),
        "macs": None if example_inputs is None else _count_macs(model, example_inputs),
        "example_inputs": None if example_inputs is None else _input_spec(example_inputs),
        "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in state.items()},
        "layers": _layers(model),
        "torch_version": torch.__version__,
        "autoprune_version": __version__,
    }


def _jsonable(value: Any) -> Any:
    """Plain JSON: non-finite floats become null, tensors numbers, anything else a string."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def _write_json(path: Path, data: Any, *, sort_keys: bool = True) -> None:
    path.write_text(json.dumps(_jsonable(data), indent=2, sort_keys=sort_keys, allow_nan=False) + "\n")


def _onnx_export(model: nn.Module, example_inputs: Any, path: Path) -> None:
    if isinstance(example_inputs, Mapping):
        args: tuple[Any, ...] = ()
        kwargs: dict[str, Any] | None = dict(example_inputs)
    else:
        args = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
        kwargs = None
    # The torch.export-based exporter needs onnxscript; without it use the TorchScript one.
    dynamo = importlib.util.find_spec("onnxscript") is not None
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(model, args, str(path), kwargs=kwargs, dynamo=dynamo)
    except Exception as exc:  # noqa: BLE001 - report any exporter failure in one line
        raise ExportError(
            f"ONNX export failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    finally:
        model.train(was_training)


# ---------------------------------------------------------------------------- save
def save_pruned(
    model: nn.Module,
    out_dir: str | Path,
    *,
    schedule: Schedule,
    metrics: Mapping[str, Any] | None = None,
    example_inputs: Any = None,
    onnx: bool = False,
) -> Path:
    """Write a pruned model as plain files (no pickled module) to ``out_dir``.

    Args:
        model: the pruned model (from :func:`autoprune.apply_schedule` or
            :meth:`PickedTrial.apply`).
        out_dir: the folder to write (created; existing files of the same names are replaced).
        schedule: the Schedule that pruned ``model``; :func:`load_pruned` re-applies it.
        metrics: JSON-able numbers to keep with the model (written to ``metrics.json``).
        example_inputs: the inputs used when pruning; their shapes are stored so that
            :func:`load_pruned` can rebuild the architecture without them, and they give
            the MACs and the ONNX trace.
        onnx: also write ``model.onnx`` (needs ``pip install onnx`` and example inputs).

    Returns:
        The folder written.

    Example:
        >>> save_pruned(pruned, "out/digits-t12", schedule=s, example_inputs=x)  # doctest: +SKIP
        PosixPath('out/digits-t12')
    """
    if not isinstance(model, nn.Module):
        raise ExportError(f"`model` must be an nn.Module, but got {type(model).__name__}")
    if not isinstance(schedule, Schedule):
        raise ExportError(f"`schedule` must be an autoprune.Schedule, but got {type(schedule).__name__}")
    if onnx:
        # Fail before writing anything.
        if importlib.util.find_spec("onnx") is None:
            raise ExportError("ONNX export needs the onnx package: pip install onnx")
        if example_inputs is None:
            raise ExportError("ONNX export needs `example_inputs` to trace the model")
    state_keys = model.state_dict().keys()
    masked = [
        k[: -len("_orig")] for k in state_keys if k.endswith("_orig") and k[: -len("_orig")] + "_mask" in state_keys
    ]
    if masked:
        # load_pruned rebuilds a plain model; masks would not fit it (apply_schedule removes them).
        raise ExportError(
            f"{masked[0]!r} still carries a torch.nn.utils.prune mask; make it permanent first "
            "(torch.nn.utils.prune.remove) or prune with autoprune.apply_schedule"
        )
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ExportError(f"output path {str(out)!r} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)

    # A plain dict of plain tensors: no module, no OrderedDict metadata, nothing to execute.
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    torch.save(state, out / WEIGHTS_FILE)
    (out / SCHEDULE_FILE).write_text(schedule.to_json(indent=2) + "\n")
    # In the model's order, so the first mismatch reported on loading is the first in the model.
    _write_json(out / ARCHITECTURE_FILE, architecture(model, example_inputs), sort_keys=False)
    _write_json(out / METRICS_FILE, dict(metrics or {}))
    if onnx:
        _onnx_export(model, example_inputs, out / ONNX_FILE)
    _logger.info("saved pruned model to %s", out)
    return out


# ---------------------------------------------------------------------------- load
def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise ExportError(f"{str(path)!r} is missing; is {str(path.parent)!r} a folder written by save_pruned?")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ExportError(f"{str(path)!r} is not valid JSON: {exc}") from None


def _load_weights(path: Path, device: torch.device) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ExportError(f"{str(path)!r} is missing; is {str(path.parent)!r} a folder written by save_pruned?")
    # torch.save writes a zip archive; anything else (a legacy pickle, a foreign file) is
    # not read at all.
    if not zipfile.is_zipfile(path):
        raise ExportError(f"cannot read {str(path)!r}: not a PyTorch weights file (the zip format torch.save writes)")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        named = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f" ({named.group(1)})" if named else ""
        raise UnsafeWeightsError(
            f"refusing {str(path)!r}: it holds more than tensors, a pickled object{what}, and nothing from it "
            "was run; save a plain state dict instead: torch.save(model.state_dict(), path)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - a corrupt or foreign file, said in one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ExportError(
            f"cannot read {str(path)!r} as a PyTorch weights file: {type(exc).__name__}: {first}"
        ) from None
    if not isinstance(state, Mapping):
        raise ExportError(f"{str(path)!r} holds a {type(state).__name__}, not a state dict")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ExportError(f"{str(path)!r} is not a plain state dict: entry {bad[0]!r} is not a named tensor")
    return dict(state)


def _check_shapes(
    expected: Mapping[str, Any], found: Mapping[str, Any], expected_name: str, found_name: str, hint: str = ""
) -> None:
    """Raise on the first key that is missing, unexpected, or of another shape."""
    for key, shape in expected.items():
        if key not in found:
            raise ArchitectureMismatchError(f"tensor {key!r} of {expected_name} is missing from {found_name}{hint}")
        if list(found[key]) != list(shape):
            raise ArchitectureMismatchError(
                f"tensor {key!r} has shape {list(shape)} in {expected_name} but {list(found[key])} in {found_name}{hint}"
            )
    extra = [k for k in found if k not in expected]
    if extra:
        raise ArchitectureMismatchError(f"tensor {extra[0]!r} of {found_name} is not in {expected_name}{hint}")


def _decoder_widths_as_recorded(model: nn.Module, recorded: Mapping[str, list[int]]) -> None:
    """A structurally pruned decoder: which query heads and key/value groups a block keeps
    was chosen on calibration data (absent here), so the block widths are read from the
    recorded tensor shapes instead (the weights then fill them)."""
    from autoprune.decoder import StructureError, decoder_layout
    from autoprune.lm.modeling_autoprune import resize_blocks

    try:
        layout = decoder_layout(model)
    except StructureError:
        return
    layers = []
    for block, shape in zip(layout.block_names(model), layout.shapes(model), strict=True):
        d = shape.head_dim
        if layout.family == "llama":
            q, k, up = (
                recorded.get(f"{block}.{n}.weight") for n in ("self_attn.q_proj", "self_attn.k_proj", "mlp.up_proj")
            )
            if not (q and k and up):
                return
            layers.append({"heads": q[0] // d, "kv_heads": k[0] // d, "head_dim": d, "intermediate": up[0]})
        else:
            qkv, fc = recorded.get(f"{block}.attn.c_attn.weight"), recorded.get(f"{block}.mlp.c_fc.weight")
            if not (qkv and fc):
                return
            layers.append(
                {"heads": qkv[1] // 3 // d, "kv_heads": qkv[1] // 3 // d, "head_dim": d, "intermediate": fc[1]}
            )
    resize_blocks(model, layers)
    config = getattr(model, "config", None)
    if config is not None:
        config.autoprune_layers = layers


def load_pruned(
    directory: str | Path,
    model_factory: Callable[[], nn.Module],
    *,
    example_inputs: Any = None,
) -> nn.Module:
    """Rebuild a model saved with :func:`save_pruned`: fresh model, schedule, weights.

    Nothing from the folder is executed: the JSON files are read as data and the weights
    with ``torch.load(weights_only=True)``; a weights file holding a pickled object (a whole
    module saved with ``torch.save(model)``) is refused with :class:`UnsafeWeightsError`.

    Args:
        directory: a folder written by :func:`save_pruned`.
        model_factory: returns a fresh *unpruned* model of the architecture that was
            pruned (its weights do not matter: they are replaced).
        example_inputs: inputs for tracing; by default zeros of the saved shapes, on the
            device of the factory's model.

    Returns:
        The pruned model in eval mode, with the saved weights.

    Raises:
        ArchitectureMismatchError: a tensor is missing, unexpected or of another shape (the
            message names the first one and both shapes).
        UnsafeWeightsError: the weights file holds a pickled object.
        ExportError: a file is missing or malformed.

    Example:
        >>> model = load_pruned("out/digits-t12", lambda: ap.tasks.get_task("digits").fresh_model())  # doctest: +SKIP
    """
    root = Path(directory)
    if not root.is_dir():
        raise ExportError(f"{str(root)!r} is not a folder written by save_pruned")
    schedule_text = (root / SCHEDULE_FILE).read_text() if (root / SCHEDULE_FILE).is_file() else None
    if schedule_text is None:
        raise ExportError(
            f"{str(root / SCHEDULE_FILE)!r} is missing; is {str(root)!r} a folder written by save_pruned?"
        )
    schedule = Schedule.from_json(schedule_text)
    arch = _read_json(root / ARCHITECTURE_FILE)
    if not isinstance(arch, Mapping) or not isinstance(arch.get("tensors"), Mapping):
        raise ExportError(f"{str(root / ARCHITECTURE_FILE)!r} has no 'tensors' record")
    version = arch.get("format_version")
    if version != FORMAT_VERSION:
        raise ExportError(f"{ARCHITECTURE_FILE} format_version must be {FORMAT_VERSION}, but got {version!r}")

    model = model_factory()
    if not isinstance(model, nn.Module):
        raise ExportError(f"`model_factory()` must return an nn.Module, but got {type(model).__name__}")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if example_inputs is None:
        spec = arch.get("example_inputs")
        if spec is None:
            raise ExportError(
                f"{ARCHITECTURE_FILE} records no example input shapes; pass `example_inputs=` to load_pruned"
            )
        example_inputs = _zeros_from_spec(spec, device)

    # Channel counts follow from the schedule alone, so no fine-tuning is needed here; nor
    # calibration: a criterion only chooses which weights are zero, and the weights come next.
    surgery = dataclasses.replace(schedule, fine_tune_steps=0, criterion="magnitude")
    pruned = apply_schedule(model, surgery, example_inputs=example_inputs)
    rebuilt = {k: list(v.shape) for k, v in pruned.state_dict().items()}
    recorded = {str(k): (v or {}).get("shape", []) for k, v in arch["tensors"].items()}
    if rebuilt != recorded and (
        schedule.remove_blocks or any(p.method == "structured" for p in schedule.layers.values())
    ):
        _decoder_widths_as_recorded(pruned, recorded)  # heads were ranked on calibration data: take the saved widths
        rebuilt = {k: list(v.shape) for k, v in pruned.state_dict().items()}
    _check_shapes(
        recorded,
        rebuilt,
        ARCHITECTURE_FILE,
        "the rebuilt model",
        "; does model_factory build the model that was pruned?",
    )

    state = _load_weights(root / WEIGHTS_FILE, device)
    _check_shapes(rebuilt, {k: list(v.shape) for k, v in state.items()}, "the rebuilt model", WEIGHTS_FILE)
    # A plain dict has no per-module version metadata (the state dict's ``_metadata``). Some
    # modules read it in ``_load_from_state_dict`` (torchvision's MNASNet refuses weights
    # without it); the rebuilt model is the same code, so its own versions are the right ones.
    versioned: OrderedDict[str, torch.Tensor] = OrderedDict(state)
    metadata = getattr(pruned.state_dict(), "_metadata", None)
    if metadata is not None:
        versioned._metadata = metadata  # type: ignore[attr-defined]
    pruned.load_state_dict(versioned, strict=True)
    return pruned.eval()
