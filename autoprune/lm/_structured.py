"""The structural search of a decoder language model: per block, how many query heads and MLP
channels to keep and whether to keep the block at all (and, where size is an objective, the
unstructured sparsity of what remains), each trial recovered by fine-tuning (by default
distillation from the dense model's logits) within its step budget, then scored on
validation perplexity and a measured, paired speedup in the regime the user runs.

References, enqueued first: the uniform width cuts (heads and MLP together; MLP alone),
ShortGPT's depth cuts (the blocks of least influence, one block and a quarter of them) and,
as what unstructured sparsity buys on this machine, uniform Wanda at 50% (same fine-tuning).
"""

from __future__ import annotations

import logging
import math
import random
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

import optuna
import torch

from autoprune._errors import ConfigError, ScheduleError
from autoprune._paths import sqlite_folder_made
from autoprune._stored import UNPRUNED, unpruned_metrics
from autoprune.decoder import allowed_head_amounts, decoder_layout, removal_order, structure_scores
from autoprune.evaluation import size_stats, tensor_bytes
from autoprune.executor import apply_schedule
from autoprune.lm._latency import REGIMES, RegimeMeters
from autoprune.oneshot import prunable_linears, sparse_bytes, weight_matrix
from autoprune.schedule import LayerPlan, Schedule, nm_pattern
from autoprune.tasks import Task

__all__ = ["MLP_AMOUNTS", "search_structure", "structure_schedule"]

_logger = logging.getLogger(__name__)

MLP_AMOUNTS = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75)
ROLE_SEARCH = "search"


def structure_schedule(
    task: Task,
    *,
    heads: dict[int, float] | None = None,
    mlp: dict[int, float] | None = None,
    remove: Sequence[int] = (),
    sparsity: float | str = 0.0,
    fine_tune_steps: int = 0,
    distill: bool = True,
    seed: int = 0,
) -> Schedule:
    """The :class:`Schedule` of one structural choice on ``task``'s decoder (block indices of
    the unpruned model); ``sparsity`` adds Wanda on every linear layer of the kept blocks: an
    amount, or an ``"N:M"`` pattern (MLP widths then kept a multiple of M)."""
    layout = decoder_layout(task.model)
    blocks = layout.block_names(task.model)
    layers: dict[str, LayerPlan] = {}
    for i, amount in (heads or {}).items():
        if amount and i not in remove:  # a removed block's widths do not matter
            layers[layout.attention_name(blocks[i])] = LayerPlan("structured", float(amount))
    for i, amount in (mlp or {}).items():
        if amount and i not in remove:
            layers[layout.mlp_name(blocks[i])] = LayerPlan("structured", float(amount))
    if sparsity:
        removed = {blocks[i] for i in remove}
        for name in prunable_linears(task.model):
            if not any(name.startswith(b + ".") for b in removed):
                if isinstance(sparsity, str):
                    n, m = nm_pattern(sparsity)
                    layers[name] = LayerPlan("unstructured", 1 - n / m, pattern=sparsity)
                else:
                    layers[name] = LayerPlan("unstructured", float(sparsity))
    return Schedule(
        layers=layers,
        remove_blocks=tuple(blocks[i] for i in remove),
        fine_tune_steps=fine_tune_steps,
        distill=distill,
        criterion="wanda" if sparsity else "magnitude",
        round_to=nm_pattern(sparsity)[1] if isinstance(sparsity, str) else None,
        seed=seed,
    )


def _size(model: torch.nn.Module, sparsity: float | str) -> int:
    """Sparse bytes: zeros as kept values plus a bitmap; under an N:M pattern every pruned
    linear layer as kept values plus index bits."""
    total = int(size_stats(model)["sparse_bytes"])
    if isinstance(sparsity, str):
        for module in prunable_linears(model).values():
            weight = weight_matrix(module)
            total += sparse_bytes(weight.numel(), int((weight == 0).sum()), sparsity) - tensor_bytes(weight)[1]
    return total


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def search_structure(
    task: Task,
    *,
    n_trials: int = 24,
    latency: str = "prefill",
    fine_tune_steps: int = 50,
    distill: bool = True,
    heads: bool = True,
    mlp: bool = True,
    depth: bool = True,
    max_removed: int | None = None,
    sparsity: Sequence[float | str] = (),
    timeout_s: float | None = None,
    seed: int = 0,
    storage: str | optuna.storages.BaseStorage | None = None,
    study_name: str | None = None,
    max_metric_increase: float | None = None,
    target: str = "cpu:threads=1",
    budget_s: float = 1.5,
    references: bool = True,
    local_share: float = 0.5,
    record_test: bool = True,
    progress: Callable[[optuna.trial.FrozenTrial], None] | None = None,
) -> optuna.Study:
    """Search heads, MLP channels and blocks to remove, per block of ``task``'s decoder.

    Args:
        n_trials: trials including the references.
        latency: the speedup the search maximises: ``prefill`` (a batch of full windows) or
            ``decode`` (tokens generated one at a time with the KV cache); both are measured
            and stored for every trial.
        fine_tune_steps: recovery steps of every trial (the same for all, references too).
        distill: recover with the task's ``distill_fine_tune`` (KL to the dense model's
            logits plus cross-entropy) instead of its plain ``fine_tune``.
        heads, mlp, depth: which dimensions are searched.
        max_removed: most blocks a trial removes (default: half of them).
        sparsity: unstructured (Wanda) amounts or ``"N:M"`` patterns a trial may add on top
            of its structure (or not: 0 is always a choice); non-empty makes model size
            (sparse bytes; N:M as kept values plus index bits) a third objective.
        max_metric_increase: constraint on the relative validation perplexity increase.
        target: where the speedups are measured.
        budget_s: timing budget of each regime's paired measurement.
        local_share: share of the trials after the references that are a neighbour of the
            fastest trial within the perplexity limit (``max_metric_increase``, else +10% on
            validation): one block's MLP or heads one step further or back, or a block removed
            or restored (EvoPress-style mutation); the rest are TPE's.
        record_test: score every trial on the test split too (never seen by the sampler).

    Raises:
        ConfigError: a task that is not a perplexity task, nothing to search, a bad regime.
        StructureError: a decoder this module cannot cut structurally (the message says to
            prune it unstructured instead).
    """
    if task.higher_is_better:
        raise ConfigError(
            f"the structural search needs a perplexity task (Task.for_causal_lm); {task.name!r} is not one"
        )
    if latency not in REGIMES:
        raise ConfigError(f"`latency` must be one of {', '.join(REGIMES)}, but got latency={latency!r}")
    if not (heads or mlp or depth):
        raise ConfigError("nothing to search: heads, mlp and depth are all off")
    if not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1:
        raise ConfigError(f"`n_trials` must be an int >= 1, but got n_trials={n_trials!r}")
    if not isinstance(fine_tune_steps, int) or isinstance(fine_tune_steps, bool) or fine_tune_steps < 0:
        raise ConfigError(f"`fine_tune_steps` must be an int >= 0, but got fine_tune_steps={fine_tune_steps!r}")
    levels: list[float | str] = []
    for s in sparsity:
        if isinstance(s, str):
            try:
                nm_pattern(s)
            except ScheduleError:
                raise ConfigError(
                    f"`sparsity` holds {s!r}: give amounts in (0, 0.95) or 'N:M' patterns such as '2:4'"
                ) from None
        elif isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 < s < 0.95:
            raise ConfigError(f"`sparsity` amounts must be in (0, 0.95) or 'N:M', but got sparsity={list(sparsity)!r}")
        if s not in levels:
            levels.append(s if isinstance(s, str) else float(s))
    layout = decoder_layout(task.model)
    shapes = layout.shapes(task.model)
    n_blocks = len(shapes)
    max_removed = n_blocks // 2 if max_removed is None else max_removed
    if not isinstance(max_removed, int) or not 0 <= max_removed < n_blocks:
        raise ConfigError(f"`max_removed` must be an int in 0..{n_blocks - 1}, but got max_removed={max_removed!r}")
    sqlite_folder_made(storage)
    objectives = ["perplexity", f"{latency}_speedup"] + (["size"] if levels else [])
    directions: list[Literal["minimize", "maximize"]] = ["minimize", "maximize"]
    if levels:
        directions.append("minimize")
    study = optuna.create_study(
        storage=storage,
        study_name=study_name,
        directions=directions,
        sampler=optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=min(8, n_trials)),
        load_if_exists=True,
    )
    config = {"kind": "structure", "latency": latency, "fine_tune_steps": fine_tune_steps, "distill": distill,
              "heads": heads, "mlp": mlp, "depth": depth, "max_removed": max_removed, "sparsity": levels,
              "max_metric_increase": max_metric_increase, "target": target, "budget_s": budget_s}  # fmt: skip
    old = study.user_attrs.get("config")
    if old is not None:  # a limit and a timing budget may change on resuming; the rest is the study's identity
        changed = [k for k in config if k not in ("max_metric_increase", "budget_s") and old.get(k) != config[k]]
        if changed:
            k = changed[0]
            raise ConfigError(
                f"study {study.study_name!r} was searched with {k}={old.get(k)!r}; this run asks {k}={config[k]!r}: "
                "use another study name"
            )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(objectives)
    study.set_user_attr("objectives", objectives)
    study.set_user_attr("config", config)
    study.set_user_attr("task", task.spec or {"name": task.name})
    study.set_user_attr("metric", {"name": task.metric_name, "higher_is_better": False, "notice": task.metric_notice})
    study.set_user_attr("blocks", [s.as_dict() for s in shapes])
    unpruned = unpruned_metrics(study) or None
    if unpruned is None:
        with torch.inference_mode():
            unpruned = {"perplexity": float(task.evaluate(task.model)), "params": _params(task.model),
                        "sparse_bytes": int(size_stats(task.model)["sparse_bytes"])}  # fmt: skip
            if task.test is not None:
                unpruned["test_perplexity"] = float(task.test(task.model))
        study.set_user_attr(UNPRUNED, unpruned)
    head_choices = [allowed_head_amounts(s) for s in shapes]
    scores = structure_scores(task.model, task.calibration_inputs)
    if references and not any(t.user_attrs.get("role") not in (None, ROLE_SEARCH) for t in study.trials):
        for role, params in _references(shapes, head_choices, scores, heads, mlp, depth, max_removed, levels):
            study.enqueue_trial(params, user_attrs={"role": role})
    meters = RegimeMeters(task, REGIMES, target)
    rng = random.Random(seed)
    start = time.perf_counter()
    while len(study.trials) < n_trials:
        if timeout_s is not None and time.perf_counter() - start > timeout_s:
            break
        waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
        if not waiting and rng.random() < local_share:
            _enqueue_neighbour(study, rng, head_choices, max_removed, max_metric_increase)
        trial = study.ask()
        try:
            choice = _suggest(trial, n_blocks, head_choices, heads, mlp, depth, levels)
            if len(choice["remove"]) > max_removed:
                raise ConfigError(f"{len(choice['remove'])} blocks removed, more than max_removed={max_removed}")
            values = _evaluate(trial, task, choice, unpruned, meters, fine_tune_steps, distill, seed, budget_s,
                               latency, levels, max_metric_increase, record_test)  # fmt: skip
            study.tell(trial, values)
        except Exception as exc:  # a failing trial is recorded with its reason; the search goes on
            trial.set_user_attr("error", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            _logger.warning("trial %d failed: %s", trial.number, exc)
        if progress is not None:
            progress(study.trials[trial.number])
    return study


def _enqueue_neighbour(
    study: optuna.Study,
    rng: random.Random,
    head_choices: list[list[float]],
    max_removed: int,
    limit: float | None,
) -> None:
    """One step from the fastest trial within the limit: a block's MLP or heads one notch
    (more often further than back), or a block removed or restored."""
    bound = 0.10 if limit is None else limit
    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if "speedup" in t.user_attrs and t.user_attrs["perplexity_increase"] <= bound]  # fmt: skip
    if not done:
        return
    base = max(done, key=lambda t: (t.user_attrs["speedup"], -t.number))
    params = dict(base.params)
    for _ in range(20):
        key = rng.choice(sorted(k for k in params if k != "sparsity"))
        kind, _, index = key.rpartition("_")
        step = 1 if rng.random() < 0.7 else -1
        moved = dict(params)
        if kind == "remove":
            moved[key] = not params[key]
            if sum(bool(moved[k]) for k in moved if k.startswith("remove_")) > max_removed:
                continue
        else:
            choices = list(MLP_AMOUNTS) if kind == "mlp" else head_choices[int(index)]
            at = choices.index(params[key]) + step
            if not 0 <= at < len(choices):
                continue
            moved[key] = choices[at]
        study.enqueue_trial(moved, user_attrs={"role": "local", "neighbour_of": base.number}, skip_if_exists=True)
        return


def _references(
    shapes: Sequence[Any],
    head_choices: list[list[float]],
    scores: Any,
    heads: bool,
    mlp: bool,
    depth: bool,
    max_removed: int,
    levels: list[float | str],
) -> list[tuple[str, dict[str, Any]]]:
    n = len(shapes)

    def params(
        h: Sequence[float] = (), m: Sequence[float] = (), remove: Sequence[int] = (), s: float | str = 0.0
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for i in range(n):
            if heads:
                out[f"heads_{i}"] = h[i] if h else 0.0
            if mlp:
                out[f"mlp_{i}"] = m[i] if m else 0.0
            if depth:
                out[f"remove_{i}"] = i in remove
        if levels:
            out["sparsity"] = s
        return out

    refs = []
    half = [min((a for a in c if a >= 0.5), default=0.0) for c in head_choices]
    if heads and mlp:
        refs.append(("uniform-heads-mlp", params(h=half, m=[0.25] * n)))
    if mlp:
        refs.append(("uniform-mlp", params(m=[0.375] * n)))
    if depth and scores.influence is not None:
        order = removal_order(scores)
        for k in sorted({1, max(1, n // 4)}):
            if k <= max_removed:
                refs.append((f"shortgpt-{k}", params(remove=order[:k])))
    if levels:
        amounts = [v for v in levels if not isinstance(v, str)]
        refs.append(("uniform-wanda", params(s=min(amounts, key=lambda s: abs(s - 0.5)) if amounts else levels[0])))
    return refs


def _suggest(
    trial: optuna.Trial,
    n: int,
    head_choices: list[list[float]],
    heads: bool,
    mlp: bool,
    depth: bool,
    levels: list[float | str],
) -> dict[str, Any]:
    choice: dict[str, Any] = {"heads": {}, "mlp": {}, "remove": [], "sparsity": 0.0}
    for i in range(n):
        if heads:
            choice["heads"][i] = float(trial.suggest_categorical(f"heads_{i}", head_choices[i]))
        if mlp:
            choice["mlp"][i] = float(trial.suggest_categorical(f"mlp_{i}", MLP_AMOUNTS))
        if depth and trial.suggest_categorical(f"remove_{i}", [False, True]):
            choice["remove"].append(i)
    if levels:
        picked: Any = trial.suggest_categorical("sparsity", [0.0, *levels])
        choice["sparsity"] = picked if isinstance(picked, str) else float(picked)
    return choice


def _evaluate(
    trial: optuna.Trial,
    task: Task,
    choice: dict[str, Any],
    unpruned: dict[str, Any],
    meters: RegimeMeters,
    fine_tune_steps: int,
    distill: bool,
    seed: int,
    budget_s: float,
    latency: str,
    levels: list[float | str],
    limit: float | None,
    record_test: bool,
) -> list[float]:
    schedule = structure_schedule(task, heads=choice["heads"], mlp=choice["mlp"], remove=choice["remove"],
                                  sparsity=choice["sparsity"], fine_tune_steps=fine_tune_steps, distill=distill,
                                  seed=seed)  # fmt: skip
    recover = task.distill_fine_tune if distill and task.distill_fine_tune is not None else task.fine_tune
    t0 = time.perf_counter()
    model = apply_schedule(task.model, schedule, example_inputs=task.example_inputs,
                           calibration=task.calibration_inputs, fine_tune=recover)  # fmt: skip
    t1 = time.perf_counter()
    with torch.inference_mode():
        ppl = float(task.evaluate(model))
    if not math.isfinite(ppl):
        raise FloatingPointError(f"validation perplexity is {ppl}")
    t2 = time.perf_counter()
    speedups = meters.measure(model, budget_s)
    t3 = time.perf_counter()
    params = _params(model)
    size = _size(model, choice["sparsity"])
    attrs: dict[str, Any] = {
        "role": trial.user_attrs.get("role", ROLE_SEARCH),
        "schedule": schedule.to_json(),
        "schedule_summary": schedule.summary(),
        "kind": "unstructured"
        if not (choice["remove"] or any(choice["heads"].values()) or any(choice["mlp"].values()))
        else (
            "depth"
            if choice["remove"] and not (any(choice["heads"].values()) or any(choice["mlp"].values()))
            else "structured"
        ),  # fmt: skip
        "heads_removed": {str(k): v for k, v in choice["heads"].items() if v},
        "mlp_removed": {str(k): v for k, v in choice["mlp"].items() if v},
        "blocks_removed": list(choice["remove"]),
        "unstructured": choice["sparsity"],
        "params": params,
        "params_removed": 1.0 - params / unpruned["params"],
        "perplexity": ppl,
        "perplexity_increase": ppl / unpruned["perplexity"] - 1.0,
        "sparse_bytes": size,
        "compression": unpruned["sparse_bytes"] / size,
        "fine_tune_steps_spent": schedule.fine_tune_budget,
        "time_prune_s": round(t1 - t0, 3),
        "time_eval_s": round(t2 - t1, 3),
        "time_latency_s": round(t3 - t2, 3),
        "fidelity": "full",
    }
    for regime, s in speedups.items():
        attrs.update({f"{regime}_speedup": s.ratio, f"{regime}_speedup_low": s.low, f"{regime}_speedup_high": s.high,
                      f"{regime}_ms": s.model_ms})  # fmt: skip
    attrs.update(speedup=attrs[f"{latency}_speedup"], speedup_low=attrs[f"{latency}_speedup_low"],
                 speedup_high=attrs[f"{latency}_speedup_high"])  # fmt: skip
    if task.test is not None and record_test and "test_perplexity" in unpruned:
        with torch.inference_mode():
            test = float(task.test(model))  # for the user; the sampler never sees it
        attrs["test_perplexity"] = test
        attrs["test_perplexity_increase"] = test / unpruned["test_perplexity"] - 1.0
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    feasible = True
    if limit is not None:
        excess = attrs["perplexity_increase"] - limit
        trial.set_constraint("metric_increase", excess)
        feasible = excess <= 0
    trial.set_user_attr("feasible", feasible)
    return [ppl, float(attrs["speedup"])] + ([float(size)] if levels else [])
