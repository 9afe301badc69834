"""The Schedule: plain, JSON-serialisable data describing how to prune a model.

A Schedule is the contract between the search and everything after it. A trial stores its
Schedule as JSON; re-applying it to the same model reproduces the trial's architecture.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from autoprune._errors import ScheduleError

__all__ = [
    "LayerPlan",
    "Schedule",
    "METHODS",
    "SHAPES",
    "IMPORTANCES",
    "CRITERIA",
    "step_amounts",
    "check_plan",
    "PrunableLayer",
    "register_preflight",
    "SCHEDULE_VERSION",
]

METHODS = ("structured", "unstructured", "none")
SHAPES = ("oneshot", "linear", "cubic")
IMPORTANCES = ("magnitude", "lamp", "random")
# How unstructured (and N:M) weights are chosen; see autoprune.oneshot.
CRITERIA = ("magnitude", "wanda", "sparsegpt")
NORMS = (1, 2)
SCHEDULE_VERSION = 1

Method = Literal["structured", "unstructured", "none"]
Shape = Literal["oneshot", "linear", "cubic"]


class PrunableLayer(Protocol):
    """What :meth:`Schedule.uniform` reads of a preflight entry (``autoprune.preflight.LayerInfo``)."""

    @property
    def name(self) -> str: ...
    @property
    def methods(self) -> tuple[str, ...]: ...
    @property
    def max_amount(self) -> float: ...


# The model -> preflight function (``autoprune.prunable.prunable_layers``). The preflight
# is downstream of the Schedule (it imports torch and Torch-Pruning), so instead of being
# imported here it registers itself: autoprune.space does so when the package is imported.
_PREFLIGHT: Callable[[Any, Any], Iterable[PrunableLayer]] | None = None


def register_preflight(preflight: Callable[[Any, Any], Iterable[PrunableLayer]]) -> None:
    """Set the function :meth:`Schedule.uniform` runs on a model (``(model, example_inputs)
    -> layers``)."""
    global _PREFLIGHT
    _PREFLIGHT = preflight


def _natural(name: str) -> tuple[Any, ...]:
    """Sort key: ``model.layers.10`` after ``model.layers.9``."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in name.split("."))


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_plan(
    method: object, amount: object, norm: object, *, layer: str | None = None, pattern: object = None
) -> None:
    """Check the fields of a :class:`LayerPlan`; the error names the rule, the layer (when
    given) and the value."""
    where = f" on layer {layer!r}" if layer is not None else ""
    if method not in METHODS:
        raise ScheduleError(f"`method` must be one of {METHODS}, but got method={method!r}{where}.")
    if not _is_number(amount) or math.isnan(amount) or not 0.0 <= amount < 1.0:  # type: ignore[arg-type,operator]
        raise ScheduleError(f"`0 <= amount < 1` must hold, but got amount={amount!r}{where}.")
    if norm not in NORMS or isinstance(norm, bool):
        raise ScheduleError(f"`norm` must be 1 or 2, but got norm={norm!r}{where}.")
    if pattern is not None:
        n, m = nm_pattern(pattern, where)
        if method != "unstructured":
            raise ScheduleError(f"`pattern` needs method='unstructured', but got method={method!r}{where}.")
        if abs(float(amount) - (1 - n / m)) > 1e-9:  # type: ignore[arg-type]
            raise ScheduleError(
                f"`amount` must be 1 - N/M = {1 - n / m:g} for pattern {pattern!r}, but got amount={amount!r}{where}."
            )


def nm_pattern(pattern: object, where: str = "") -> tuple[int, int]:
    """``"N:M"`` (N weights kept in every M consecutive ones of a row) -> ``(N, M)``."""
    parts = pattern.split(":") if isinstance(pattern, str) else []
    if len(parts) != 2 or not all(p.isdigit() for p in parts) or not 0 < int(parts[0]) < int(parts[1]) <= 64:
        raise ScheduleError(
            f"`pattern` must be 'N:M' with 0 < N < M <= 64 (e.g. '2:4'), but got pattern={pattern!r}{where}."
        )
    return int(parts[0]), int(parts[1])


@dataclass(frozen=True)
class LayerPlan:
    """How one layer (or coupled group, named by its root layer) is pruned.

    Args:
        method: ``"structured"`` removes whole output channels (and everything coupled to
            them) physically; ``"unstructured"`` zeroes individual weights by magnitude;
            ``"none"`` leaves the layer alone.
        amount: final fraction in ``[0, 1)``: of the group's channels (structured) or of
            the layer's weights (unstructured).
        norm: the ``p`` of the magnitude criterion, 1 or 2. For unstructured pruning the
            ranking of single weights is the same for both.
        pattern: ``None`` (unstructured: any ``amount`` of the layer's weights), or ``"N:M"``
            (unstructured method only): N weights kept in every M consecutive weights of a row,
            so ``amount`` must be ``1 - N/M`` (``"2:4"``: 0.5).
    """

    method: Method = "structured"
    amount: float = 0.0
    norm: int = 1
    pattern: str | None = None

    def __post_init__(self) -> None:
        check_plan(self.method, self.amount, self.norm, pattern=self.pattern)

    def validate(self, layer: str | None = None) -> None:
        """Raise :class:`ScheduleError` unless the plan is valid (``layer`` names it in the message)."""
        check_plan(self.method, self.amount, self.norm, layer=layer, pattern=self.pattern)

    def to_dict(self) -> dict[str, Any]:
        # `pattern` only when set: plans without one keep the JSON they always had
        return {"method": self.method, "amount": self.amount, "norm": self.norm,
                **({"pattern": self.pattern} if self.pattern is not None else {})}  # fmt: skip


def _shape_fraction(shape: str, t: int, steps: int) -> float:
    """Fraction of the final amount reached after step ``t`` of ``steps`` (t in 0..steps)."""
    if t >= steps:
        return 1.0
    if shape == "oneshot":
        return 0.0 if t < steps else 1.0
    if shape == "linear":
        return t / steps
    # Zhu & Gupta (2017): s_t = s_f + (s_i - s_f) (1 - t/n)^3 with s_i = 0.
    return 1.0 - (1.0 - t / steps) ** 3


def step_amounts(amount: float, steps: int, shape: str) -> list[float]:
    """Cumulative amounts after each of the ``steps`` pruning steps (last one == amount).

    ``oneshot`` with several steps prunes everything at the last step (the earlier steps only
    fine-tune), ``linear`` grows evenly and ``cubic`` front-loads the pruning as in Zhu &
    Gupta (2017): ``s_t = s_f (1 - (1 - t/n)^3)``.

    Example:
        >>> step_amounts(0.5, 2, "linear")
        [0.25, 0.5]
    """
    if shape not in SHAPES:
        raise ScheduleError(f"`shape` must be one of {SHAPES}, but got shape={shape!r}.")
    return [amount * _shape_fraction(shape, t, steps) for t in range(1, steps + 1)]


@dataclass(frozen=True)
class Schedule:
    """A pruning schedule: per-layer plans plus whole-model and iterative options.

    Args:
        layers: layer path (``model.named_modules()`` name) -> :class:`LayerPlan`. For
            structured pruning a layer names its coupled group; any layer of the group works.
        steps: number of pruning steps; 1 is one-shot.
        shape: how the amount grows over the steps: ``oneshot``, ``linear`` or ``cubic``.
        fine_tune_steps: fine-tuning steps after each pruning step (given to the task's
            ``fine_tune``); the last pruning step is followed by fine-tuning too.
        importance: criterion ranking structured channels: ``magnitude`` (L-norm of the
            group's weights, ``p`` from each layer's ``norm``), ``lamp`` or ``random``.
        global_unstructured: rank the weights of all unstructured layers together
            (``torch.nn.utils.prune.global_unstructured``); the total number of zeroed
            weights stays what the per-layer amounts ask, their distribution moves to where
            the globally smallest weights are.
        round_to: keep structured channel counts a multiple of this (hardware friendly). In
            grouped convolutions and attention it applies per group: each head keeps a
            multiple of ``round_to`` dims, so the embedding stays divisible by the heads.
        attention_heads: how structured pruning cuts a group that holds
            ``nn.MultiheadAttention``: ``False`` (default) removes the same number of dims
            from every head (``num_heads`` stays, ``head_dim`` shrinks); ``True`` removes
            whole heads, the least important first (``num_heads`` shrinks, ``head_dim``
            stays), keeping at least one. Either way the embedding shrinks, and with it every
            layer coupled to it through the residual stream.
        ignore: layer paths that are never touched, whatever ``layers`` says.
        seed: seed for the random parts (random importance, tie breaks).
        criterion: how unstructured and N:M weights are chosen: ``"magnitude"`` (``|W|``, the
            default), ``"wanda"`` (``|W|`` times its input's norm over calibration tokens,
            per output row) or ``"sparsegpt"`` (second-order selection with weight updates).
            The last two need calibration inputs (``apply_schedule(..., calibration=...)``;
            a task's ``calibration_inputs``). See :mod:`autoprune.oneshot`.
        distill: fine-tune with the task's ``distill_fine_tune`` (a distillation term from
            the unpruned model) instead of its plain ``fine_tune``. The executor does not read
            it; whoever passes ``fine_tune`` does (the search, ``PickedTrial.apply``).
        remove_blocks: decoder blocks of a language model removed whole (their paths, e.g.
            ``"model.layers.3"``), after any width pruning; see :mod:`autoprune.decoder`. On a
            decoder, a structured plan on a block's attention (``"model.layers.3.self_attn"``)
            removes that fraction of its query heads, and on its MLP (``"model.layers.3.mlp"``)
            that fraction of its channels.

    Example:
        >>> s = Schedule(layers={"features.0": LayerPlan("structured", 0.5)}, steps=3, shape="cubic")
        >>> Schedule.from_json(s.to_json()) == s
        True
    """

    layers: Mapping[str, LayerPlan] = field(default_factory=dict)
    steps: int = 1
    shape: Shape = "oneshot"
    fine_tune_steps: int = 0
    importance: str = "magnitude"
    global_unstructured: bool = False
    round_to: int | None = None
    ignore: tuple[str, ...] = ()
    seed: int = 0
    attention_heads: bool = False
    distill: bool = False
    criterion: str = "magnitude"
    remove_blocks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.layers, Mapping):
            raise ScheduleError(f"`layers` must map layer names to LayerPlans, but got {type(self.layers).__name__}.")
        # A bare string would otherwise become a tuple of its characters.
        if isinstance(self.ignore, str) or not all(isinstance(n, str) and n for n in self.ignore):
            raise ScheduleError(f"`ignore` must be a list of layer names, but got ignore={self.ignore!r}.")
        # Normalise containers so equality and hashing do not depend on the caller's types.
        object.__setattr__(self, "layers", dict(sorted(dict(self.layers).items(), key=lambda kv: str(kv[0]))))
        object.__setattr__(self, "ignore", tuple(sorted(set(self.ignore))))
        blocks = self.remove_blocks
        if isinstance(blocks, str) or not all(isinstance(n, str) and n for n in blocks):
            raise ScheduleError(f"`remove_blocks` must be a list of block paths, but got remove_blocks={blocks!r}.")
        object.__setattr__(self, "remove_blocks", tuple(sorted(set(blocks), key=_natural)))
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        for name, plan in self.layers.items():
            if not isinstance(name, str) or not name:
                raise ScheduleError(f"layer names must be non-empty strings, but got {name!r}.")
            if not isinstance(plan, LayerPlan):
                raise ScheduleError(f"layer {name!r} must map to a LayerPlan, but got {type(plan).__name__}.")
            plan.validate(name)
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or not 1 <= self.steps <= 100:
            raise ScheduleError(f"`1 <= steps <= 100` must hold, but got steps={self.steps!r}.")
        if self.shape not in SHAPES:
            raise ScheduleError(f"`shape` must be one of {SHAPES}, but got shape={self.shape!r}.")
        if (
            not isinstance(self.fine_tune_steps, int)
            or isinstance(self.fine_tune_steps, bool)
            or self.fine_tune_steps < 0
        ):
            raise ScheduleError(f"`fine_tune_steps >= 0` must hold, but got fine_tune_steps={self.fine_tune_steps!r}.")
        if self.importance not in IMPORTANCES:
            raise ScheduleError(f"`importance` must be one of {IMPORTANCES}, but got importance={self.importance!r}.")
        if not isinstance(self.attention_heads, bool):
            raise ScheduleError(f"`attention_heads` must be a bool, but got {self.attention_heads!r}.")
        if self.criterion not in CRITERIA:
            raise ScheduleError(f"`criterion` must be one of {CRITERIA}, but got criterion={self.criterion!r}.")
        if not isinstance(self.distill, bool):
            raise ScheduleError(f"`distill` must be a bool, but got {self.distill!r}.")
        if not isinstance(self.global_unstructured, bool):
            raise ScheduleError(f"`global_unstructured` must be a bool, but got {self.global_unstructured!r}.")
        if self.round_to is not None and (
            not isinstance(self.round_to, int) or isinstance(self.round_to, bool) or self.round_to < 1
        ):
            raise ScheduleError(f"`round_to` must be None or an int >= 1, but got round_to={self.round_to!r}.")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ScheduleError(f"`seed` must be an int, but got seed={self.seed!r}.")

    # ------------------------------------------------------------------ helpers
    def amounts_at(self, name: str) -> list[float]:
        """Cumulative amounts of layer ``name`` after each pruning step."""
        plan = self.layers[name]
        return step_amounts(plan.amount, self.steps, self.shape)

    def active_layers(self, method: str | None = None) -> dict[str, LayerPlan]:
        """Plans that do something (amount > 0, method not none, not ignored)."""
        return {
            name: p
            for name, p in self.layers.items()
            if p.method != "none"
            and p.amount > 0
            and name not in self.ignore
            and (method is None or p.method == method)
        }

    def summary(self) -> str:
        """A one-line human summary, e.g. for plot hovers and tables."""
        active = self.active_layers()
        if not active:
            return "unpruned"
        parts = []
        for method, tag in (("structured", "S"), ("unstructured", "U")):
            amounts = [p.amount for p in active.values() if p.method == method and p.pattern is None]
            if amounts:
                parts.append(f"{tag}x{len(amounts)} mean {sum(amounts) / len(amounts):.0%}")
        for pattern in sorted({p.pattern for p in active.values() if p.pattern is not None}):
            parts.append(f"{pattern}x{sum(p.pattern == pattern for p in active.values())}")
        sched = f"{self.steps} step{'s' if self.steps > 1 else ''} {self.shape}" if self.steps > 1 else "one-shot"
        if self.fine_tune_steps:
            sched += f", ft {self.fine_tune_steps}"
        if self.global_unstructured:
            sched += ", global"
        if self.criterion != "magnitude":
            sched += f", {self.criterion}"
        if self.round_to and self.round_to > 1 and any(p.method == "structured" for p in active.values()):
            sched += f", round {self.round_to}"
        if self.attention_heads and any(p.method == "structured" for p in active.values()):
            sched += ", whole heads"
        if self.distill and self.fine_tune_steps:
            sched += ", distill"
        return ", ".join(parts) + "; " + sched

    # ------------------------------------------------------------------ builders
    @classmethod
    def uniform(
        cls,
        layers: Iterable[PrunableLayer] | Any,
        example_inputs: Any = None,
        *,
        method: Method = "structured",
        amount: float = 0.5,
        **options: Any,
    ) -> Schedule:
        """The same plan on every layer that supports ``method`` (what a person tries by hand).

        Args:
            layers: the model itself (then ``example_inputs`` too: the preflight runs on it),
                or its preflight, ``autoprune.prunable_layers(model, example_inputs)``
                (anything with ``name``, ``methods`` and ``max_amount``). Each amount is capped
                at the layer's safe maximum.
            example_inputs: inputs the model takes, when ``layers`` is the model.
            method: ``structured`` or ``unstructured``.
            amount: the amount asked of every layer.
            **options: the other :class:`Schedule` fields (``steps``, ``round_to``...).

        Example:
            >>> from types import SimpleNamespace as Layer
            >>> layers = [Layer(name="a", methods=("structured",), max_amount=0.9),
            ...           Layer(name="out", methods=("unstructured",), max_amount=0.99)]
            >>> list(Schedule.uniform(layers, amount=0.95).layers.items())
            [('a', LayerPlan(method='structured', amount=0.9, norm=1))]

            With a model: ``Schedule.uniform(model, example_inputs, amount=0.5)``.
        """
        if hasattr(layers, "named_modules"):
            # A model: its preflight lives downstream of the Schedule and registers itself
            # (register_preflight), so this module never imports it.
            if example_inputs is None:
                raise ScheduleError(
                    f"`Schedule.uniform` of a model needs its example inputs, but got only a {type(layers).__name__}; "
                    "call Schedule.uniform(model, example_inputs, amount=...)."
                )
            if _PREFLIGHT is None:
                raise ScheduleError("no preflight is registered; `import autoprune` registers it")
            layers = _PREFLIGHT(layers, example_inputs)
        elif example_inputs is not None or not isinstance(layers, Iterable) or isinstance(layers, (str, Mapping)):
            raise ScheduleError(
                f"`Schedule.uniform` takes a model and its example inputs, or the model's preflight, but got "
                f"{type(layers).__name__}{' and example inputs' if example_inputs is not None else ''}; call "
                "Schedule.uniform(model, example_inputs, amount=...) or "
                "Schedule.uniform(autoprune.prunable_layers(model, example_inputs), amount=...)."
            )
        plans = {
            info.name: LayerPlan(method=method, amount=min(amount, info.max_amount))
            for info in layers
            if method in info.methods
        }
        return cls(layers=plans, **options)

    # ------------------------------------------------------------------ fidelity
    def with_fine_tune(self, fine_tune_steps: int) -> Schedule:
        """The same pruning with ``fine_tune_steps`` per step: the cheap (screening) version of
        a schedule, or its full version back. The architecture it produces is the same.

        Example:
            >>> s = Schedule(layers={"a": LayerPlan("structured", 0.5)}, fine_tune_steps=100)
            >>> s.with_fine_tune(10).fine_tune_steps, s.with_fine_tune(10).layers == s.layers
            (10, True)
        """
        return dataclasses.replace(self, fine_tune_steps=fine_tune_steps)

    @property
    def fine_tune_budget(self) -> int:
        """Fine-tuning steps the whole schedule spends (``steps * fine_tune_steps``)."""
        return self.steps * self.fine_tune_steps

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": SCHEDULE_VERSION,
            "layers": {name: plan.to_dict() for name, plan in self.layers.items()},
            "steps": self.steps,
            "shape": self.shape,
            "fine_tune_steps": self.fine_tune_steps,
            "importance": self.importance,
            "global_unstructured": self.global_unstructured,
            "round_to": self.round_to,
            "ignore": list(self.ignore),
            "seed": self.seed,
            "attention_heads": self.attention_heads,
            # only when set: schedules without distillation keep the JSON they always had
            **({"distill": True} if self.distill else {}),
            **({"criterion": self.criterion} if self.criterion != "magnitude" else {}),
            **({"remove_blocks": list(self.remove_blocks)} if self.remove_blocks else {}),
        }

    def __hash__(self) -> int:
        # `layers` is a dict, so the generated hash would fail; the canonical JSON is the
        # schedule's identity (equal schedules have equal JSON)
        return hash(self.to_json())

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, **kwargs)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Schedule:
        if not isinstance(data, Mapping):
            raise ScheduleError(f"a schedule must be a JSON object, but got {type(data).__name__}.")
        data = dict(data)
        version = data.pop("version", SCHEDULE_VERSION)
        if version != SCHEDULE_VERSION:
            raise ScheduleError(f"schedule `version` must be {SCHEDULE_VERSION}, but got version={version!r}.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ScheduleError(f"unknown schedule field(s) {unknown}; allowed: {sorted(known)}.")
        raw_layers = data.pop("layers", {})
        if not isinstance(raw_layers, Mapping):
            raise ScheduleError(f"`layers` must be an object, but got {type(raw_layers).__name__}.")
        layers = {}
        for name, plan in raw_layers.items():
            if not isinstance(plan, Mapping):
                raise ScheduleError(f"layer {name!r} must be an object, but got {plan!r}.")
            extra = sorted(set(plan) - {"method", "amount", "norm", "pattern"})
            if extra:
                raise ScheduleError(
                    f"unknown field(s) {extra} on layer {name!r}; allowed: method, amount, norm, pattern."
                )
            check_plan(plan.get("method", "structured"), plan.get("amount", 0.0), plan.get("norm", 1), layer=str(name),
                       pattern=plan.get("pattern"))  # fmt: skip
            layers[name] = LayerPlan(**plan)
        for key in ("ignore", "remove_blocks"):
            if isinstance(data.get(key), list):
                data[key] = tuple(data[key])
        return cls(layers=layers, **data)

    @classmethod
    def from_json(cls, text: str) -> Schedule:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ScheduleError(f"schedule is not valid JSON: {exc}") from None
        return cls.from_dict(data)
