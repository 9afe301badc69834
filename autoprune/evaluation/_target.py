"""The latency target: where and how a model's latency is measured."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any

import torch

from autoprune._errors import TargetError
from autoprune.evaluation._backends import backend_names

__all__ = ["Target", "DTYPES"]

# Canonical dtype names and the torch dtypes they stand for.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
_DTYPE_ALIASES = {"fp32": "float32", "float": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}
_DEVICE_RE = re.compile(r"^(cpu|cuda(:\d+)?)$")
# Option name in the text form -> field name of Target.
_OPTIONS = {"batch": "batch_size", "threads": "threads", "dtype": "dtype", "backend": "backend"}
_SYNTAX = "DEVICE[:OPTION=VALUE,...] with DEVICE cpu, cuda or cuda:N and OPTION batch, threads, dtype or backend"


@dataclass(frozen=True)
class Target:
    """Where and how latency is measured.

    The text form (used on the command line, in study configs and stored with each trial) is
    ``DEVICE[:OPTION=VALUE,...]``: ``DEVICE`` is ``cpu``, ``cuda`` or ``cuda:N``; the options
    are ``batch`` (batch size), ``threads`` (CPU threads), ``dtype`` (``float32``,
    ``float16``, ``bfloat16``) and ``backend`` (a registered :class:`LatencyBackend`).
    ``str(target)`` writes that form with the options that differ from the defaults, and
    :meth:`parse` reads it back to an equal target.

    Attributes:
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        batch_size: the batch size to time; ``None`` times the example batch as given.
            Other sizes repeat or truncate the example batch along its first dimension.
        threads: CPU threads (``torch.set_num_threads``) during the measurement, restored
            afterwards; ``None`` leaves torch's setting alone.
        dtype: floating dtype the model and inputs are cast to for the measurement.
        backend: name of the :class:`LatencyBackend` that runs the model (``"dense"``:
            plain PyTorch kernels, where unstructured zeros cost as much as any weight).

    Example:
        >>> t = Target.parse("cpu:threads=2,batch=32")
        >>> (t.threads, t.batch_size, str(t))
        (2, 32, 'cpu:batch=32,threads=2')
    """

    device: str = "cpu"
    batch_size: int | None = None
    threads: int | None = None
    dtype: str = "float32"
    backend: str = "dense"

    def __post_init__(self) -> None:
        if not isinstance(self.device, str) or not _DEVICE_RE.match(self.device):
            raise TargetError(f"target device must be cpu, cuda or cuda:N, but got device={self.device!r}.")
        for name in ("batch_size", "threads"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise TargetError(f"target `{name} >= 1` (or None) must hold, but got {name}={value!r}.")
        dtype = _DTYPE_ALIASES.get(self.dtype, self.dtype)
        if dtype not in DTYPES:
            raise TargetError(f"target dtype must be one of {', '.join(DTYPES)}, but got dtype={self.dtype!r}.")
        object.__setattr__(self, "dtype", dtype)
        if self.backend not in backend_names():
            raise TargetError(
                f"target backend must be a registered latency backend ({', '.join(backend_names())}), "
                f"but got backend={self.backend!r}."
            )

    @classmethod
    def parse(cls, text: str | Target) -> Target:
        """Read the text form ``DEVICE[:OPTION=VALUE,...]`` (a Target is returned as is).

        Raises:
            TargetError: the text does not follow the syntax, or a value is not allowed.
        """
        if isinstance(text, Target):
            return text
        if not isinstance(text, str):
            raise TargetError(f"a target must be a string like 'cpu:threads=2', but got {text!r}.")
        parts = text.strip().split(":")
        device = parts.pop(0).strip().lower()
        if device == "cuda" and parts and parts[0].strip().isdigit():
            device += ":" + parts.pop(0).strip()
        if len(parts) > 1:
            raise TargetError(f"target {text!r} does not follow {_SYNTAX}.")
        kwargs: dict[str, Any] = {"device": device}
        for item in parts[0].split(",") if parts and parts[0].strip() else []:
            key, sep, value = (s.strip() for s in item.partition("="))
            if not sep or key not in _OPTIONS or not value:
                raise TargetError(
                    f"target option {item.strip()!r} in {text!r} is not allowed; use {', '.join(_OPTIONS)}=VALUE ({_SYNTAX})."
                )
            if _OPTIONS[key] in kwargs:
                raise TargetError(f"target option {key!r} is given twice in {text!r}.")
            if key in ("batch", "threads"):
                try:
                    kwargs[_OPTIONS[key]] = int(value)
                except ValueError:
                    raise TargetError(
                        f"target option {key} must be a positive integer, but got {key}={value!r}."
                    ) from None
            else:
                kwargs[_OPTIONS[key]] = value
        return cls(**kwargs)

    def __str__(self) -> str:
        defaults = {f.name: f.default for f in fields(self)}
        options = [
            f"{option}={getattr(self, name)}"
            for option, name in _OPTIONS.items()
            if getattr(self, name) != defaults[name]
        ]
        return self.device + (":" + ",".join(options) if options else "")

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    def check_available(self) -> None:
        """Raise :class:`TargetError` when this machine cannot run the target.

        A CUDA target on a machine without CUDA is an error, never a silent fallback to CPU.
        """
        if not self.is_cuda:
            return
        if not torch.cuda.is_available():
            raise TargetError(
                f"target {str(self)!r} needs CUDA, but torch.cuda.is_available() is False on this machine "
                f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}); use a cpu target or run on a GPU machine."
            )
        index = self.torch_device.index
        count = torch.cuda.device_count()
        if index is not None and index >= count:
            raise TargetError(
                f"target {str(self)!r} names CUDA device {index}, but this machine has {count} "
                f"(allowed: cuda:0 to cuda:{count - 1})."
            )
