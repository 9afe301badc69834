"""``Task.from_loaders``: a task from a trained model and its DataLoaders (its fields).

Batches are ``(inputs, target)`` pairs (``(*inputs, target)`` for several inputs) or dicts
whose ``"labels"`` (or ``"label"``, ``"target"``, ``"y"``) entry is the target and whose other
entries are the model's keyword inputs, as Hugging Face collators make them.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import RandomSampler

from autoprune._errors import TaskError
from autoprune._inputs import call_model, map_tensors, select_output
from autoprune.tasks._calibrate import reestimate_batchnorm

__all__ = ["loader_fields", "make_runner", "distillation_loss", "split_batch", "OPTIMIZERS", "METRICS"]

Metric = str | Callable[[torch.Tensor, torch.Tensor], Any]
OptimizerSpec = str | Callable[[list[nn.Parameter]], torch.optim.Optimizer]
Schedule = Callable[[torch.optim.Optimizer, int], Any]

OPTIMIZERS = ("sgd", "adamw")
METRICS = ("top1",)
_TARGET_KEYS = ("labels", "label", "target", "y")


def split_batch(batch: Any) -> tuple[Any, Any]:
    """``(inputs, target)`` of a batch: a ``(x, y)`` / ``(*xs, y)`` sequence or a dict with a label key."""
    if isinstance(batch, dict):
        for key in _TARGET_KEYS:
            if key in batch:
                return {k: v for k, v in batch.items() if k != key}, batch[key]
        raise ValueError(f"a dict batch needs a target under one of {_TARGET_KEYS}, but has keys {sorted(batch)}")
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        inputs = batch[0] if len(batch) == 2 else tuple(batch[:-1])
        return inputs, batch[-1]
    raise ValueError(
        f"a batch must be (inputs, target), (*inputs, target) or a dict with a target key, but got {type(batch).__name__}"
    )


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's distillation term: ``T**2 * KL(softmax(teacher / T) || softmax(student / T))``.

    Averaged over the rows (every dimension but the last is a row); exactly zero when the two
    outputs are equal.

    Example:
        >>> import torch
        >>> logits = torch.randn(4, 10)
        >>> float(distillation_loss(logits, logits.clone(), 2.0))
        0.0
    """
    classes = student.shape[-1]
    s = F.log_softmax(student.reshape(-1, classes).float() / temperature, dim=-1)
    t = F.log_softmax(teacher.reshape(-1, classes).float() / temperature, dim=-1)
    return F.kl_div(s, t, reduction="batchmean", log_target=True) * temperature**2


def _top1(output: torch.Tensor, target: torch.Tensor) -> float:
    # Counted exactly: a float32 mean put 1634 of 2000 at 81.69999..., and a trial that lost
    # exactly 1 point broke a 1-point constraint by 5e-6.
    hits = output.argmax(dim=-1) == target
    return 100.0 * int(hits.sum()) / max(hits.numel(), 1)


def _to(device: torch.device) -> Callable[[Any], Any]:
    return lambda batch: map_tensors(batch, lambda t: t.to(device, non_blocking=True))


def _model_device(model: nn.Module) -> torch.device | None:
    for tensor in [*model.parameters(), *model.buffers()]:
        return tensor.device
    return None


class _Runner:
    """Holds what the task's callables share: loaders, loss, optimiser recipe, device, seed."""

    def __init__(
        self,
        *,
        train: Any,
        val: Any,
        test: Any,
        loss: Callable[[Any, Any], Any],
        make_optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
        metric: Callable[[torch.Tensor, torch.Tensor], Any],
        teacher: nn.Module | None,
        distill: tuple[float, float] | None,
        device: torch.device,
        seed: int,
        output: str | int | None,
        calibration_batches: int,
        lr_schedule: str = "constant",
    ) -> None:
        self.train, self.val, self.test = train, val, test
        self.lr_schedule = lr_schedule
        self.loss, self.make_optimizer, self.metric = loss, make_optimizer, metric
        self.teacher, self.distill = teacher, distill
        self.device, self.seed, self.output = device, seed, output
        self.calibration_batches = calibration_batches
        self.to_device = _to(device)
        self._val_targets: torch.Tensor | None = None  # the order evaluate_samples first saw

    # ------------------------------------------------------------------ randomness
    def _fork_rng(self) -> Any:
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        return torch.random.fork_rng(devices=devices)

    def _batches(self, loader: Any) -> Iterator[Any]:
        """Cycle ``loader`` (a new epoch, so a new shuffle, each time it runs out)."""
        while True:
            empty = True
            for batch in loader:
                empty = False
                yield batch
            if empty:
                raise TaskError("train: the loader yields no batches; give a DataLoader with at least one batch")

    # ------------------------------------------------------------------ the task's callables
    def fine_tune(self, model: nn.Module, steps: int) -> None:
        self.run_steps(model, steps, distill=False, schedule=self._fine_tune_schedule())

    def distill_fine_tune(self, model: nn.Module, steps: int) -> None:
        self.run_steps(model, steps, distill=True, schedule=self._fine_tune_schedule())

    def _fine_tune_schedule(self) -> Schedule | None:
        # "cosine": each fine-tune call decays the learning rate from lr to 0 over its steps.
        if self.lr_schedule == "cosine":
            return _cosine
        return None

    def run_steps(self, model: nn.Module, steps: int, *, distill: bool, schedule: Schedule | None = None) -> None:
        """``steps`` optimiser steps on the train loader in train mode; the model ends in eval mode."""
        model.to(self.device)
        if steps > 0:
            # Seeded per call from the model's size, so the same schedule fine-tunes the same way.
            n_params = sum(p.numel() for p in model.parameters())
            with self._fork_rng():
                torch.manual_seed(self.seed * 1_000_003 + n_params + steps)
                self._steps(model, steps, distill, schedule)
        model.eval()

    def _steps(self, model: nn.Module, steps: int, distill: bool, schedule: Schedule | None) -> None:
        opt = self.make_optimizer([p for p in model.parameters() if p.requires_grad])
        lr_schedule = schedule(opt, steps) if schedule is not None else None
        teacher = self.teacher if distill else None
        model.train()
        batches = self._batches(self.train)
        for _ in range(steps):
            inputs, target = self.to_device(split_batch(next(batches)))
            output = select_output(call_model(model, inputs), self.output)
            loss = self.loss(output, target)
            if teacher is not None and self.distill is not None:
                weight, temperature = self.distill
                with torch.no_grad():
                    expected = select_output(call_model(teacher, inputs), self.output)
                loss = loss + weight * distillation_loss(output, expected, temperature)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"fine-tuning loss became {loss.item()}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if lr_schedule is not None:
                lr_schedule.step()

    def evaluate(self, model: nn.Module) -> float:
        return self.score(model, self.val, "val")

    def evaluate_samples(self, model: nn.Module) -> torch.Tensor | None:
        """Top-1 per validation target (100.0 right, 0.0 wrong; float64), or None when the
        loader's order cannot be trusted: it samples at random, or its targets came in
        another order than on the first call. Its mean is :meth:`evaluate`'s score."""
        if isinstance(getattr(self.val, "sampler", None), RandomSampler):
            return None
        output, target = self.outputs(model, self.val)
        target = target.reshape(-1)
        if self._val_targets is None:
            self._val_targets = target
        elif not torch.equal(target, self._val_targets):
            return None
        hits = output.argmax(dim=-1).reshape(-1) == target
        return hits.to(torch.float64) * 100.0

    def test_score(self, model: nn.Module) -> float:
        return self.score(model, self.test, "test")

    @torch.no_grad()
    def outputs(self, model: nn.Module, loader: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The scored outputs and targets of every batch of ``loader``, in eval mode, on the CPU."""
        was_training, home = model.training, _model_device(model)
        model.eval()
        model.to(self.device)
        outputs, targets = [], []
        try:
            for batch in loader:
                inputs, target = self.to_device(split_batch(batch))
                outputs.append(select_output(call_model(model, inputs), self.output).detach().float().cpu())
                targets.append(torch.as_tensor(target).cpu())
        finally:
            model.train(was_training)
            if home is not None and home != self.device:
                model.to(home)  # evaluation does not move the caller's model for good
        return torch.cat(outputs), torch.cat(targets)

    def score(self, model: nn.Module, loader: Any, argument: str) -> float:
        output, target = self.outputs(model, loader)
        return _number(self.metric(output, target), argument)

    def calibrate(self, model: nn.Module) -> None:
        model.to(self.device)
        with self._fork_rng():
            torch.manual_seed(self.seed)
            batches = []
            for batch in self.train:
                batches.append(self.to_device(split_batch(batch)[0]))
                if len(batches) >= self.calibration_batches:
                    break
        reestimate_batchnorm(model, batches)
        model.eval()


def _number(value: Any, argument: str) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TaskError(f"metric must return a number, but returned {type(value).__name__} (scoring {argument})")
    return float(value)


def _optimizer(
    optimizer: OptimizerSpec, lr: float, weight_decay: float
) -> Callable[[list[nn.Parameter]], torch.optim.Optimizer]:
    if callable(optimizer):
        return optimizer
    if optimizer == "sgd":
        return lambda params: torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    if optimizer == "adamw":
        return lambda params: torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise TaskError(f"optimizer must be one of {OPTIMIZERS} or a callable(params) -> Optimizer, but got {optimizer!r}")


def _metric(metric: Metric) -> Callable[[torch.Tensor, torch.Tensor], Any]:
    if callable(metric):
        return metric
    if metric == "top1":
        return _top1
    raise TaskError(f"metric must be one of {METRICS} or a callable(outputs, targets) -> number, but got {metric!r}")


def _cosine(opt: torch.optim.Optimizer, steps: int) -> Any:
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))


LR_SCHEDULES = ("cosine", "constant")


def _check_arguments(
    lr: Any, weight_decay: Any, distill: Any, seed: Any, calibration_batches: Any, loss: Any
) -> tuple[float, float] | None:
    def positive(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0

    if not positive(lr):
        raise TaskError(f"lr must be a finite number > 0, but got lr={lr!r}")
    if not (positive(weight_decay) or weight_decay == 0) or isinstance(weight_decay, bool):
        raise TaskError(f"weight_decay must be a finite number >= 0, but got weight_decay={weight_decay!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TaskError(f"seed must be an int, but got seed={seed!r}")
    if not isinstance(calibration_batches, int) or isinstance(calibration_batches, bool) or calibration_batches < 1:
        raise TaskError(f"calibration_batches must be an int >= 1, but got calibration_batches={calibration_batches!r}")
    if loss is not None and not callable(loss):
        raise TaskError(f"loss must be None (cross-entropy) or a callable(output, target) -> Tensor, but got {loss!r}")
    if distill is None:
        return None
    if not isinstance(distill, (tuple, list)) or len(distill) != 2 or not all(positive(v) for v in distill):
        raise TaskError(f"distill must be None or (weight > 0, temperature > 0), but got distill={distill!r}")
    return float(distill[0]), float(distill[1])


def _first_batch(loader: Any, argument: str) -> Any:
    if loader is None or isinstance(loader, (str, bytes)) or not isinstance(loader, Iterable):
        raise TaskError(f"{argument} must be a DataLoader (an iterable of batches), but got {type(loader).__name__}")
    for batch in loader:
        return batch
    raise TaskError(f"{argument}: the loader yields no batches; give a DataLoader with at least one batch")


def _probe(runner: _Runner, model: nn.Module, batch: Any, argument: str, *, with_loss: bool) -> Any:
    """Run the model on one batch of a loader, so a bad loader fails here with its argument's name."""
    try:
        inputs, target = split_batch(batch)
    except ValueError as exc:
        raise TaskError(f"{argument}: {exc}") from None
    inputs, target = runner.to_device((inputs, target))
    try:
        with torch.no_grad():
            raw = call_model(model, inputs)
    except Exception as exc:  # noqa: BLE001 - any failure means the model cannot take this batch
        raise TaskError(
            f"{argument}: the model cannot take a batch of this loader ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        ) from exc
    try:
        output = select_output(raw, runner.output)
    except ValueError as exc:
        raise TaskError(f"output: {exc}") from None
    if with_loss:
        try:
            value = runner.loss(output, target)
        except Exception as exc:  # noqa: BLE001 - the loss cannot take this output and target
            raise TaskError(
                f"loss: fails on a batch of {argument} ({type(exc).__name__}: {str(exc).splitlines()[0]})"
            ) from exc
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise TaskError(f"loss must return a scalar tensor, but returned {type(value).__name__}")
    else:
        _number(runner.metric(output.float().cpu(), torch.as_tensor(target).cpu()), argument)
    return inputs


def make_runner(
    model: nn.Module,
    *,
    train: Any,
    val: Any,
    test: Any = None,
    loss: Callable[[Any, Any], Any] | None = None,
    optimizer: OptimizerSpec = "sgd",
    lr: float = 0.01,
    weight_decay: float = 0.0,
    metric: Metric = "top1",
    distill: tuple[float, float] | None = None,
    device: Any = None,
    seed: int = 0,
    output: str | int | None = None,
    calibration_batches: int = 8,
    lr_schedule: str = "constant",
) -> _Runner:
    """Check the arguments of :func:`from_loaders`, move ``model`` to its device, and build the runner."""
    distill = _check_arguments(lr, weight_decay, distill, seed, calibration_batches, loss)
    if lr_schedule not in LR_SCHEDULES:
        raise TaskError(f"lr_schedule must be one of {', '.join(map(repr, LR_SCHEDULES))}, but got lr_schedule={lr_schedule!r}")
    if not isinstance(model, nn.Module):
        raise TaskError(f"model must be a torch.nn.Module, but got {type(model).__name__}")
    try:
        where = torch.device(device) if device is not None else (_model_device(model) or torch.device("cpu"))
    except (RuntimeError, TypeError) as exc:
        raise TaskError(
            f"device must be a torch device such as 'cpu' or 'cuda:0', but got {device!r} ({exc})"
        ) from None
    model.to(where).eval()
    return _Runner(
        train=train,
        val=val,
        test=test,
        loss=loss or F.cross_entropy,
        make_optimizer=_optimizer(optimizer, lr, weight_decay),
        metric=_metric(metric),
        teacher=copy.deepcopy(model).requires_grad_(False) if distill else None,
        distill=distill,
        device=where,
        seed=seed,
        output=output,
        calibration_batches=calibration_batches,
        lr_schedule=lr_schedule,
    )


def loader_fields(
    model: nn.Module,
    *,
    train: Any,
    val: Any,
    test: Any = None,
    example_inputs: Any = None,
    loss: Callable[[Any, Any], Any] | None = None,
    optimizer: OptimizerSpec = "sgd",
    lr: float = 0.01,
    weight_decay: float = 0.0,
    metric: Metric = "top1",
    distill: tuple[float, float] | None = None,
    device: Any = None,
    seed: int = 0,
    output: str | int | None = None,
    scale: str | None = None,
    name: str | None = None,
    calibration_batches: int = 8,
    lr_schedule: str = "constant",
) -> dict[str, Any]:
    """The fields of a task from a trained model and its DataLoaders:
    ``Task.from_loaders(model, **options)`` (also ``autoprune.tasks.from_loaders``) is
    ``Task(**loader_fields(model, **options))``.

    Args:
        model: the trained, unpruned model; moved to ``device``.
        train: batches for ``fine_tune`` and ``calibrate``: ``(inputs, target)``,
            ``(*inputs, target)`` or a dict with a ``"labels"`` entry.
        val: batches for ``evaluate``, the score the search optimises.
        test: batches for ``test``, the held-out score that is reported and never reaches
            the sampler; ``None``: the task has no test score.
        example_inputs: inputs for tracing and latency; default: the first train batch's inputs.
        loss: ``loss(output, target) -> Tensor`` on the scored output; default cross-entropy.
        optimizer: ``"sgd"`` (momentum 0.9), ``"adamw"`` or ``callable(params) -> Optimizer``;
            a new optimiser is made for every fine-tune call.
        lr: learning rate of ``"sgd"`` / ``"adamw"``.
        weight_decay: weight decay of ``"sgd"`` / ``"adamw"``.
        metric: ``"top1"`` (accuracy in percent) or ``metric(outputs, targets) -> number``
            called once with the scored outputs and targets of the whole loader (on the CPU).
        distill: ``(weight, temperature)``: ``distill_fine_tune`` adds
            ``weight * distillation_loss(output, unpruned_output, temperature)`` to the loss,
            with a frozen copy of the unpruned model on the same device as teacher. Plain
            ``fine_tune`` never distills, so a search can choose.
        device: where fine-tuning and evaluation run; default: the model's device.
        seed: seeds each fine-tune call (with the model's size and the step count), so the
            same model fine-tunes the same way.
        output: which output is scored (a dict key such as ``"logits"`` or a tuple position).
        scale: ``"percent"``, ``"fraction"`` or ``None`` (inferred; see ``in_percent``).
        name: the task's name; default: the model's class name in lower case.
        calibration_batches: how many train batches ``calibrate`` uses.
        lr_schedule: ``"constant"``: ``lr`` throughout every fine-tune call; ``"cosine"``: each
            call decays the learning rate from ``lr`` to 0 over its steps (an iterative
            schedule's steps each get their own decay), so it ends settled instead of where
            its last full-size step left it. Which recovers more depends on the task: on
            shapes-resnet (width 32) 100 constant steps at 1e-3 took the unpruned model from
            95.97% to 87.5% test accuracy and cosine kept 95.5%; on digits constant recovered
            80% uniform pruning to 99.11% and cosine to 96.0%.

    Raises:
        TaskError: a bad argument; the message names it and says what is allowed.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> import autoprune as ap
        >>> data = TensorDataset(torch.randn(64, 4), torch.randint(0, 3, (64,)))
        >>> loader = DataLoader(data, batch_size=16)
        >>> task = ap.Task.from_loaders(nn.Linear(4, 3), train=loader, val=loader, lr=0.1)
        >>> task.fine_tune(task.fresh_model(), 5)
        >>> 0.0 <= task.evaluate(task.model) <= 100.0
        True
    """
    runner = make_runner(
        model,
        train=train,
        val=val,
        test=test,
        loss=loss,
        optimizer=optimizer,
        lr=lr,
        weight_decay=weight_decay,
        metric=metric,
        distill=distill,
        device=device,
        seed=seed,
        output=output,
        calibration_batches=calibration_batches,
        lr_schedule=lr_schedule,
    )
    with torch.random.fork_rng(devices=[]):  # probing shuffled loaders leaves the caller's RNG alone
        first_inputs = _probe(runner, model, _first_batch(train, "train"), "train", with_loss=True)
        _probe(runner, model, _first_batch(val, "val"), "val", with_loss=False)
        if test is not None:
            _probe(runner, model, _first_batch(test, "test"), "test", with_loss=False)
    return dict(
        name=name or type(model).__name__.lower(),
        model=model,
        example_inputs=first_inputs if example_inputs is None else runner.to_device(example_inputs),
        evaluate=runner.evaluate,
        fine_tune=runner.fine_tune,
        test=runner.test_score if test is not None else None,
        calibrate=runner.calibrate,
        distill_fine_tune=runner.distill_fine_tune if runner.distill else None,
        output=output,
        scale=scale,
        metric_name="accuracy" if metric == "top1" else getattr(metric, "__name__", "score"),
        # per example only for top-1: a metric of the whole loader (F1, mAP) does not split
        evaluate_samples=runner.evaluate_samples if metric == "top1" else None,
    )
