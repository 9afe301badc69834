"""Studies built with Optuna directly, as the search writes them (the contract of
:mod:`autoprune.study.keys`), for tests of what reads a study: results, report, CLI.

- :func:`synthetic_report_study`: a finished search with references, search trials,
  failures and infeasible trials; metrics made up (more pruning: less accurate, faster).
- :func:`make_real_study`: real pruned digits models, measured (latency a stand-in).
- :func:`synthetic_results_study`: nine hand-made trials the pick rules are checked on.
- :func:`tolerance_study`: validation ties and near-ties, for the front's tolerance.
- :func:`new_study` and :func:`add_trial`: the two steps the others are made of.
"""

from __future__ import annotations

import random
import warnings
from typing import Any, cast

import optuna
import torch
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

import autoprune as ap
from autoprune.evaluation import count_macs, size_stats
from autoprune.schedule import Method
from autoprune.study import keys as study_keys

#: The task the studies name: the small digits task of the tests.
TASK_SPEC: dict[str, Any] = {"name": "digits", "width": 16, "batch_size": 32}
OBJECTIVES = ["accuracy", "latency"]
OBJECTIVE_SETS = {2: ["accuracy", "latency"], 3: ["accuracy", "latency", "size"]}
METHODS: tuple[Method, ...] = ("structured", "unstructured", "none")

__all__ = [
    "METHODS",
    "OBJECTIVES",
    "OBJECTIVE_SETS",
    "SYNTHETIC",
    "TASK_SPEC",
    "add_trial",
    "make_real_study",
    "measure",
    "new_study",
    "real_schedules",
    "synthetic_report_study",
    "synthetic_results_study",
    "tolerance_study",
]


def _set_objectives(study: optuna.Study, objectives: list[str]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(objectives)
    study.set_user_attr("objectives", objectives)


def new_study(storage: str, name: str, unpruned: dict[str, Any]) -> optuna.Study:
    """An empty accuracy/latency study of the digits task with these unpruned metrics."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=name, storage=storage, directions=[cast(Any, study_keys.DIRECTIONS[o]) for o in OBJECTIVES]
    )
    _set_objectives(study, OBJECTIVES)
    study.set_user_attr("task", TASK_SPEC)
    study.set_user_attr("unpruned", unpruned)
    return study


def add_trial(
    study: optuna.Study,
    schedule: ap.Schedule | None,
    metrics: dict[str, Any],
    *,
    role: str = study_keys.ROLE_SEARCH,
    constraints: dict[str, float] | None = None,
    state: TrialState = TrialState.COMPLETE,
    **extra: Any,
) -> None:
    """Add a finished trial with ``metrics``; drop, speedup and compression are derived from
    the study's unpruned metrics as the search derives them."""
    base = study.user_attrs["unpruned"]
    attrs: dict[str, Any] = {"role": role, **metrics, **extra}
    if schedule is not None:
        attrs["schedule"] = schedule.to_json()
        attrs["schedule_summary"] = schedule.summary()
    if "accuracy" in metrics:
        attrs["accuracy_drop"] = base["accuracy"] - metrics["accuracy"]
        attrs["speedup"] = base["latency_ms"] / metrics["latency_ms"]
        attrs["compression"] = base["dense_bytes"] / metrics["sparse_bytes"]
    if constraints is not None:
        attrs["feasible"] = all(v <= 0 for v in constraints.values())
    complete = state == TrialState.COMPLETE
    values = [float(metrics[study_keys.OBJECTIVES[o][0]]) for o in OBJECTIVES] if complete else None
    study.add_trial(create_trial(state=state, values=values, user_attrs=attrs, constraints=constraints))


def measure(task: ap.Task, schedule: ap.Schedule) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Prune like the search does and record real accuracy, sizes and MACs.

    Latency is a deterministic stand-in (proportional to MACs) so that pick rules on it are
    exact; measured latency is the evaluator's business, not the results API's.
    """
    pruned = ap.apply_schedule(task.model, schedule, example_inputs=task.example_inputs, fine_tune=task.fine_tune)
    metrics: dict[str, Any] = {"accuracy": task.evaluate(pruned), **size_stats(pruned)}
    metrics["macs"] = count_macs(pruned, task.example_inputs)
    metrics["latency_ms"] = metrics["macs"] / 1e5
    return pruned, metrics


def real_schedules(task: ap.Task) -> dict[str, ap.Schedule]:
    """Four schedules of the digits CNN: none, uniform 50%, a two-step mix, one light layer."""
    names = [i.name for i in ap.prunable_layers(task.model, task.example_inputs)]
    if names[:4] != ["features.0", "features.3", "features.7", "classifier.1"]:
        raise ValueError(f"not the digits CNN: its prunable layers are {names}")
    return {
        "unpruned": ap.Schedule(),
        "uniform": ap.uniform_schedule(task.model, task.example_inputs, amount=0.5, fine_tune_steps=10),
        "mixed": ap.Schedule(
            layers={
                "features.3": ap.LayerPlan("structured", 0.5),
                "classifier.1": ap.LayerPlan("structured", 0.25, norm=2),
                "classifier.3": ap.LayerPlan("unstructured", 0.5),
            },
            steps=2,
            shape="linear",
            fine_tune_steps=10,
        ),
        "light": ap.Schedule(layers={"features.0": ap.LayerPlan("structured", 0.25)}),
    }


def make_real_study(storage: str, name: str, task: ap.Task) -> dict[str, Any]:
    """A study of real pruned digits models; returns {label: (trial number, model, metrics)}.
    After the four of :func:`real_schedules`: an infeasible trial and a failed one."""
    schedules = real_schedules(task)
    measured = {label: measure(task, s) for label, s in schedules.items()}
    study = new_study(storage, name, unpruned=measured["unpruned"][1])
    out: dict[str, Any] = {}
    roles = {"unpruned": study_keys.ROLE_UNPRUNED, "uniform": study_keys.ROLE_UNIFORM}
    for number, (label, schedule) in enumerate(schedules.items()):
        model, metrics = measured[label]
        role = roles.get(label, study_keys.ROLE_SEARCH)
        add_trial(study, schedule, metrics, role=role, constraints={"accuracy_drop": -1})
        out[label] = (number, model, metrics)
    add_trial(study, schedules["light"], measured["light"][1], constraints={"accuracy_drop": 3.0})
    add_trial(study, None, {}, state=TrialState.FAIL, error="RuntimeError: boom")
    return out


#: Hand-made metrics: (accuracy_drop, latency_ms, sparse_bytes, nonzero_params, macs).
SYNTHETIC: dict[int, tuple[float, float, int, int, int] | None] = {
    0: (0.0, 10.0, 1000, 1000, 5000),  # unpruned
    1: (0.3, 6.0, 600, 500, 3000),
    2: (0.8, 4.0, 700, 300, 2500),
    3: (2.0, 2.0, 200, 100, 1000),
    4: (0.1, 1.0, 100, 50, 400),  # infeasible: would win every rule
    5: (5.0, 10.0, 1000, 1000, 5000),  # early-rejected (unpruned size, as the search records)
    6: None,  # failed
    7: (0.44, 5.0, 300, 200, 2000),
    8: (1.0, 7.0, 650, 400, 500),  # off the front (dominated by 1) but the fewest MACs
}


def synthetic_results_study(storage: str, name: str = "synthetic") -> optuna.Study:
    """The trials of :data:`SYNTHETIC`, numbered as its keys (accuracy limit 4.5 points)."""
    base = {"accuracy": 99.0, "latency_ms": 10.0, "dense_bytes": 1000, "sparse_bytes": 1000}
    study = new_study(storage, name, base)
    schedule = ap.Schedule(layers={"features.0": ap.LayerPlan("structured", 0.25)})
    for number, row in SYNTHETIC.items():
        if row is None:
            add_trial(study, schedule, {}, state=TrialState.FAIL, error="RuntimeError: boom")
            continue
        drop, latency, size, nonzero, macs = row
        metrics = {
            "accuracy": 99.0 - drop,
            "latency_ms": latency,
            "sparse_bytes": size,
            "dense_bytes": 1000,
            "nonzero_params": nonzero,
            "params": 1000,
            "macs": macs,
        }
        constraints = {"latency_ms": 0.5} if number == 4 else {"accuracy_drop": drop - 4.5}
        add_trial(
            study,
            ap.Schedule() if number == 0 else schedule,
            metrics,
            role=study_keys.ROLE_UNPRUNED if number == 0 else study_keys.ROLE_SEARCH,
            constraints=constraints,
            early_rejected=number == 5,
        )
    return study


def tolerance_study(storage: str, tolerance: float | None) -> optuna.Study:
    """Validation accuracy ties and near-ties, as on a small split (270 images: 0.37 points
    each), in a study named ``tol-{tolerance}``; ``tolerance`` is the stored front tolerance
    (None: an older study that stored none)."""
    base = {"accuracy": 99.0, "latency_ms": 10.0, "dense_bytes": 1000, "sparse_bytes": 1000}
    study = new_study(storage, f"tol-{tolerance}", base)
    if tolerance is not None:
        study.set_user_attr("config", {"front_tolerance": tolerance})
    schedule = ap.Schedule(layers={"features.0": ap.LayerPlan("structured", 0.25)})
    rows = [(99.0, 10.0), (99.0, 5.0), (98.8, 6.0), (98.0, 7.0), (98.63, 4.0), (99.0, 5.0), (99.9, 1.0)]
    for number, (acc, latency) in enumerate(rows):
        metrics = {"accuracy": acc, "latency_ms": latency, "sparse_bytes": 1000, "dense_bytes": 1000}
        add_trial(study, schedule, metrics, constraints={"accuracy_drop": -1.0 if number < 6 else 1.0})
    return study


def synthetic_report_study(
    n_objectives: int = 2,
    n_trials: int = 40,
    *,
    layers: list[ap.LayerInfo] | None = None,
    task_spec: dict[str, Any] | None = None,
    storage: str | None = None,
    name: str = "report-test",
    seed: int = 0,
) -> optuna.Study:
    """A finished study as the search writes it: the unpruned trial, two uniform references,
    search trials (every 9th from the 5th failed; those over 12 points of drop infeasible).
    Metrics are synthetic: more pruning -> lower accuracy, faster, smaller. ``layers`` (real
    ones, from ``ap.prunable_layers``) make the schedules apply to that model."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rng = random.Random(seed)
    objectives = OBJECTIVE_SETS[n_objectives]
    study = optuna.create_study(
        study_name=name, storage=storage, directions=[cast(Any, study_keys.DIRECTIONS[o]) for o in objectives]
    )
    _set_objectives(study, objectives)
    if task_spec is not None:
        study.set_user_attr("task", task_spec)
    names = [i.name for i in layers] if layers else ["conv1", "conv2", "fc1", "fc2"]
    methods = {i.name: i.methods for i in layers} if layers else {}
    max_amount = {i.name: min(i.max_amount, 0.9) for i in layers} if layers else {}
    study.set_user_attr(
        "layers", [i.as_dict() for i in layers] if layers else [{"name": n, "params": 100} for n in names]
    )
    dists: dict[str, BaseDistribution] = {}
    for n in names:
        dists[f"{n}:method"] = CategoricalDistribution(list(METHODS))
        dists[f"{n}:amount"] = FloatDistribution(0.0, 0.9)
    trials = []
    for i in range(n_trials):
        role = (
            study_keys.ROLE_UNPRUNED if i == 0 else study_keys.ROLE_UNIFORM if i in (1, 2) else study_keys.ROLE_SEARCH
        )
        plans: dict[str, ap.LayerPlan] = {}
        params: dict[str, Any] = {}
        for n in names:
            allowed: list[Method] = [m for m in METHODS if m == "none" or m in methods.get(n, METHODS)]
            if role == study_keys.ROLE_SEARCH:
                method, amount = rng.choice(allowed), round(rng.uniform(0.0, max_amount.get(n, 0.9)), 2)
            else:
                method = "structured" if i == 1 and "structured" in allowed else "unstructured"
                amount = 0.0 if role == study_keys.ROLE_UNPRUNED else 0.5
            params[f"{n}:method"], params[f"{n}:amount"] = method, amount
            plans[n] = ap.LayerPlan(method, amount)
        schedule = ap.Schedule(layers=plans)
        frac = sum(p.amount for p in schedule.active_layers().values()) / len(names)
        acc = 98.0 - 30.0 * frac**2 + rng.uniform(-1.0, 1.0)
        latency = 1.0 - 0.6 * frac + rng.uniform(-0.05, 0.05)
        size = 80_000 * (1.0 - frac) + rng.uniform(0.0, 1_000.0)
        values = [acc, latency, size][:n_objectives]
        drop = 98.0 - acc
        feasible = role != study_keys.ROLE_SEARCH or drop <= 12.0
        attrs = {
            "role": role,
            "schedule": schedule.to_json(),
            "schedule_summary": schedule.summary(),
            "accuracy": acc,
            "latency_ms": latency,
            "sparse_bytes": int(size),
            "macs": 1_000_000,
            "accuracy_drop": drop,
            "speedup": 1.0 / latency,
            "compression": 80_000 / size,
            "feasible": feasible,
            "fidelity": "full",
        }
        search = role == study_keys.ROLE_SEARCH
        kwargs: dict[str, Any] = {"params": params, "distributions": dists} if search else {}
        if search and i % 9 == 4:
            trials.append(
                create_trial(state=TrialState.FAIL, user_attrs={**attrs, "error": "RuntimeError: boom"}, **kwargs)
            )
            continue
        constraints = {"accuracy_drop": drop - 12.0 if search else -1.0}
        trials.append(create_trial(values=values, user_attrs=attrs, constraints=constraints, **kwargs))
    study.add_trials(trials)
    return study
