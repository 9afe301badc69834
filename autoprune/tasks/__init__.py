"""Built-in tasks by name, and user tasks from ``"package.module:factory"``.

The registry follows the package's one idiom (as latency backends do: ``register_backend``,
``get_backend``, ``backend_names``): :func:`register_task`, :func:`get_task`, :func:`task_names`.
The shorter ``register``, ``get`` and ``names`` of earlier versions are the same functions.

Example:
    >>> import autoprune as ap
    >>> task = ap.tasks.get_task("digits")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable
from typing import Any

from autoprune._errors import TaskError
from autoprune.tasks._base import SCALES, Task, in_percent
from autoprune.tasks._builtin import cache_dir
from autoprune.tasks._calibrate import reestimate_batchnorm
from autoprune.tasks._digits import make_digits
from autoprune.tasks._loaders import distillation_loss
from autoprune.tasks._shapes import make_shapes_resnet
from autoprune.tasks._tinylm import make_tinylm

from_loaders = Task.from_loaders  # the function form of ``Task.from_loaders``

__all__ = [
    "SCALES",
    "Task",
    "cache_dir",
    "distillation_loss",
    "from_loaders",
    "from_spec",
    "get",
    "get_task",
    "in_percent",
    "load",
    "names",
    "reestimate_batchnorm",
    "register",
    "register_task",
    "task_metric",
    "task_names",
]

_REGISTRY: dict[str, Callable[..., Task]] = {}
_METRICS: dict[str, str] = {}


def register_task(name: str, *, metric: str | None = None) -> Callable[[Callable[..., Task]], Callable[..., Task]]:
    """Decorator: register a task factory under ``name`` (then ``get_task(name, **options)``).

    ``metric``, if given, is the ``metric_name`` of the tasks it builds ("accuracy",
    "perplexity"...): known before a task is built, so that options of the other kind of
    search are refused at once instead of after the model is trained or loaded."""

    def deco(factory: Callable[..., Task]) -> Callable[..., Task]:
        _REGISTRY[name] = factory
        if metric is None:
            _METRICS.pop(name, None)
        else:
            _METRICS[name] = metric
        return factory

    return deco


register_task("digits", metric="accuracy")(make_digits)
register_task("shapes-resnet", metric="accuracy")(make_shapes_resnet)
register_task("tinylm", metric="perplexity")(make_tinylm)


def task_metric(name: str) -> str | None:
    """The metric a registered task scores, if it was registered with one; None otherwise
    (a user factory ``"package.module:factory"`` is known only once built)."""
    return _METRICS.get(name)


def task_names() -> list[str]:
    """The registered tasks' names, sorted."""
    return sorted(_REGISTRY)


def get_task(name: str, **options: Any) -> Task:
    """A built-in task by name, or a user task by ``"package.module:factory"``."""
    if ":" in name:
        return load(name, **options)
    if name not in _REGISTRY:
        raise TaskError(
            f"unknown task {name!r}; built-in tasks: {', '.join(task_names())}, or give 'package.module:factory'"
        )
    task = _REGISTRY[name](**options)
    task.spec.setdefault("name", name)
    return task


def load(path: str, **options: Any) -> Task:
    """Load a user task from ``"package.module:factory"``; the factory returns a Task."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise TaskError(f"task path {path!r} must look like 'package.module:factory'")
    try:
        module = _import(module_name)
    except ImportError as exc:
        raise TaskError(f"cannot import module {module_name!r} of task {path!r}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a broken user module, reported with its cause
        raise TaskError(
            f"importing module {module_name!r} of task {path!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise TaskError(f"module {module_name!r} has no callable {attr!r} (task {path!r})")
    try:
        inspect.signature(factory).bind(**options)
    except TypeError as exc:
        raise TaskError(f"task factory {path!r} rejected options {sorted(options)}: {exc}") from None
    except ValueError:  # no signature (some builtins): let the call decide
        pass
    try:
        task = factory(**options)
    except Exception as exc:  # noqa: BLE001 - the user's factory failed; keep its traceback
        raise TaskError(f"task factory {path!r} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(task, Task):
        raise TaskError(f"task factory {path!r} returned {type(task).__name__}, not autoprune.Task")
    task.spec = {**task.spec, "name": path, **options}
    return task


def _import(module_name: str) -> Any:
    """Import a task module; like ``python -m`` and uvicorn, the current folder is searched too.

    The current folder goes at the end of ``sys.path``, so it never shadows installed packages.
    """
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)
    return importlib.import_module(module_name)


def from_spec(spec: dict[str, Any]) -> Task:
    """Rebuild a task from its ``Task.spec`` (as saved with a study)."""
    options = dict(spec)
    name = options.pop("name", None)
    if not isinstance(name, str):
        raise TaskError(f"task spec {spec!r} has no 'name'")
    return get_task(name, **options)


# The names of earlier versions (README examples and user code call ap.tasks.get): the same functions.
register = register_task
get = get_task
names = task_names
