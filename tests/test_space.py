"""SearchSpace: conditional parameters, one source of truth for params and schedules,
round trips through Optuna's enqueue, the sensitivity parametrization."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch

import autoprune as ap
from autoprune.config import SearchConfig, SpaceConfig, load_toml
from autoprune.schedule import Schedule
from autoprune.sensitivity import Curve, Sensitivity
from autoprune.space import SearchSpace
from autoprune.testing import models as zoo

optuna.logging.set_verbosity(optuna.logging.WARNING)
ROOT = Path(__file__).resolve().parents[1]
WHOLE_SCHEDULE = {"fine_tune_steps", "steps", "shape", "importance", "norm", "round_to", "attention_heads",
                  "global_unstructured"}  # fmt: skip


@pytest.fixture(scope="module")
def cnn_layers() -> list[ap.LayerInfo]:
    model, x = zoo.get("cnn")
    return ap.prunable_layers(model, x)


# The wide space these tests exercise: fine-tuning and rounding searched too (the defaults fix
# fine-tuning at 100 steps and search rounding).
WIDE = {"fine_tune_steps": [0, 25, 50, 100], "round_to": None, "fine_tune_per_trial": False}


def _space(layers: list[ap.LayerInfo], **kw: Any) -> SearchSpace:
    return SearchSpace(layers, SpaceConfig(**{**WIDE, **kw}))


def _sampled(space: SearchSpace, n: int, seed: int = 0) -> list[tuple[dict[str, Any], Schedule]]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        schedule = space.suggest(trial)
        out.append((dict(trial.params), schedule))
        study.tell(trial, 0.0)
    return out


# ---------------------------------------------------------------------------- hygiene
def test_every_sampled_parameter_applies(cnn_layers: list[ap.LayerInfo]) -> None:
    space = _space(cnn_layers, round_to=[1, 8], importance=["magnitude", "lamp", "random"])
    seen: set[str] = set()
    for params, schedule in _sampled(space, 120):
        seen |= set(params)
        for unit in space.units:
            method = params.get(f"{unit.key}:method")
            # no amount for a unit that is not pruned, and an amount for one that is
            assert (f"{unit.key}:amount" in params) == (method != "none")
        structured = bool(schedule.active_layers("structured"))
        assert ("importance" in params) == structured
        assert ("round_to" in params) == structured
        assert ("norm" in params) == (structured and schedule.importance != "random")
        assert ("shape" in params) == (schedule.steps > 1)
        assert ("steps" in params) == (schedule.fine_tune_steps > 0)
        if schedule.steps > 1:
            assert schedule.shape != "oneshot"  # would only fine-tune the unpruned model first
        else:
            assert schedule.shape == "oneshot"
        n_unstructured = sum(
            len(i.weights) for u in space.units for i in u.layers if i.name in schedule.active_layers("unstructured")
        )
        assert ("global_unstructured" in params) == (n_unstructured >= 2)
        assert "attention_heads" not in params  # no attention in this model
        assert space.schedule_from_params(params) == schedule  # params say exactly what ran
    assert WHOLE_SCHEDULE - {"attention_heads"} <= seen  # each conditional parameter does occur


def test_the_output_layer_has_no_structured_choice(cnn_layers: list[ap.LayerInfo]) -> None:
    space = _space(cnn_layers)
    out = next(u for u in space.units if u.key == "classifier.3")
    assert out.methods == ("unstructured", "none") and not out.supports("structured")
    assert out.supports("unstructured")


def test_dimension_is_the_most_parameters_a_trial_samples(cnn_layers: list[ap.LayerInfo]) -> None:
    space = _space(cnn_layers, round_to=[1, 8])
    sizes = [len(params) for params, _ in _sampled(space, 200, seed=3)]
    assert max(sizes) <= space.dimension
    # all of them: every unit pruned (method + amount), an iterative schedule with two
    # shapes, importance, norm, round_to, global_unstructured (attention: not in this model)
    assert space.dimension == 2 * len(space.units) + 1 + 1 + 1 + 1 + 1 + 1 + 1
    fixed = _space(cnn_layers, methods=["structured"], steps=[1, 1], fine_tune_steps=[0], importance=["magnitude"],
                   norms=[1], global_unstructured=[False], shapes=["oneshot"])  # fmt: skip
    assert fixed.dimension == len(fixed.units) == len(space.units) - 1  # not the output layer: it cannot be
    params, _ = _sampled(fixed, 1)[0]
    assert set(params) == {f"{u.key}:amount" for u in fixed.units}


@pytest.mark.parametrize("granularity,expected_units", [("layer", 7), ("block", 2), ("global", 1)])
def test_granularity_ties_layers(cnn_layers: list[ap.LayerInfo], granularity: str, expected_units: int) -> None:
    space = _space(cnn_layers, granularity=granularity, block_depth=1)
    assert len(space.units) == expected_units
    for params, schedule in _sampled(space, 10):
        assert all(":" in n or n in WHOLE_SCHEDULE for n in params)
        assert len(params) <= space.dimension
        for unit in space.units:
            planned = {schedule.layers[i.name].amount for i in unit.layers if i.name in schedule.layers}
            if params.get(f"{unit.key}:method") == "structured":
                # one amount for the unit, capped per layer at its safe maximum
                amount = round(params[f"{unit.key}:amount"], 6)
                assert planned <= {min(amount, i.max_amount) for i in unit.layers}


def test_oneshot_only_means_one_step(cnn_layers: list[ap.LayerInfo]) -> None:
    space = _space(cnn_layers, shapes=["oneshot"], steps=[1, 3])
    for params, schedule in _sampled(space, 20):
        assert schedule.steps == 1 and "steps" not in params and "shape" not in params


def test_same_seed_same_params_other_seed_other_params(cnn_layers: list[ap.LayerInfo]) -> None:
    space = _space(cnn_layers)
    a = [p for p, _ in _sampled(space, 8, seed=5)]
    b = [p for p, _ in _sampled(space, 8, seed=5)]
    c = [p for p, _ in _sampled(space, 8, seed=6)]
    assert a == b and a != c


def test_whole_heads_is_a_choice_only_where_attention_is_pruned() -> None:
    model, x = zoo.get("transformer")
    space = SearchSpace(ap.prunable_layers(model, x), SpaceConfig(**WIDE, methods=["structured", "none"]))
    choices = set()
    for params, schedule in _sampled(space, 30, seed=1):
        reaches = any(i.heads > 0 and i.name in schedule.active_layers() for u in space.units for i in u.layers)
        assert ("attention_heads" in params) == reaches
        if reaches:
            assert schedule.attention_heads is params["attention_heads"]
            choices.add(schedule.attention_heads)
        else:
            assert schedule.attention_heads is False
    assert choices == {False, True}
    fixed = SearchSpace(ap.prunable_layers(model, x), SpaceConfig(**WIDE, methods=["structured"], attention_heads=[True]))
    params, schedule = _sampled(fixed, 1)[0]
    assert "attention_heads" not in params
    unstructured = SearchSpace(ap.prunable_layers(model, x), SpaceConfig(**WIDE, methods=["unstructured"]))
    assert all("attention_heads" not in p for p, _ in _sampled(unstructured, 5))


# ---------------------------------------------------------------------------- one source of truth
@pytest.mark.parametrize("granularity", ["layer", "block", "global"])
def test_enqueued_params_reproduce_the_schedule(cnn_layers: list[ap.LayerInfo], granularity: str) -> None:
    space = _space(cnn_layers, granularity=granularity, round_to=[1, 8])
    schedules = [s for _, s in _sampled(space, 15, seed=2)]
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    for schedule in schedules:
        params = space.params_for(schedule)
        study.enqueue_trial(params)
        trial = study.ask()
        assert space.suggest(trial) == schedule
        assert trial.params == params
        study.tell(trial, 0.0)
        assert space.suggest(optuna.trial.FixedTrial(params)) == schedule


def test_amounts_become_params_and_a_schedule(cnn_layers: list[ap.LayerInfo]) -> None:
    space = _space(cnn_layers)
    amounts = {"features.0.0": 0.31, "features.3.0": 0.5, "classifier.1": 0.02, "classifier.3": 0.4}
    params = space.params_for(amounts)
    # on the grid; 0.02 rounds to nothing; the output layer cannot be pruned structurally
    assert params["features.0.0:amount"] == 0.3 and params["features.3.0:amount"] == 0.5
    assert params["features.1.0:method"] == "none" and "features.1.0:amount" not in params
    assert params["classifier.1:method"] == "none" and params["classifier.3:method"] == "none"
    assert params["fine_tune_steps"] == 100 and params["steps"] == 1 and "shape" not in params
    schedule = space.schedule_from_params(params, seed=4)
    assert {n: (p.method, p.amount) for n, p in schedule.layers.items()} == {
        "features.0.0": ("structured", 0.3),
        "features.3.0": ("structured", 0.5),
    }
    assert (schedule.fine_tune_steps, schedule.steps, schedule.seed) == (100, 1, 4)
    cheap = space.params_for(amounts, fine_tune_steps=25, steps=2, shape="cubic", importance="lamp")
    assert space.schedule_from_params(cheap).fine_tune_steps == 25
    assert space.schedule_from_params(cheap).shape == "cubic"
    unstructured = space.schedule_from_params(space.params_for({"classifier.3": 0.4}, method="unstructured"))
    assert unstructured.layers == {"classifier.3": ap.LayerPlan("unstructured", 0.4)}


def test_uniform_references_record_what_runs(cnn_layers: list[ap.LayerInfo]) -> None:
    space = _space(cnn_layers)
    params = space.uniform_params(0.5)
    # the output layer can only be pruned unstructured: the uniform structured schedule
    # leaves it out, and its params say so
    assert params["classifier.3:method"] == "none" and "classifier.3:amount" not in params
    schedule = space.uniform_schedule(0.5)
    assert set(schedule.layers) == {u.key for u in space.units if u.supports("structured")}
    assert {p.method for p in schedule.layers.values()} == {"structured"}
    assert all(p.amount == 0.5 for p in schedule.layers.values())
    assert schedule == space.schedule_from_params(params) == space.suggest(optuna.trial.FixedTrial(params))
    assert (schedule.steps, schedule.fine_tune_steps) == (1, 100)
    unpruned = space.uniform_params(0.0)
    assert all(v == "none" for k, v in unpruned.items() if k.endswith(":method"))
    assert unpruned["fine_tune_steps"] == 0 and "steps" not in unpruned  # nothing pruned, nothing fine-tuned
    assert space.schedule_from_params(unpruned, seed=3) == Schedule(seed=3)  # what the unpruned trial runs
    no_none = _space(cnn_layers, methods=["structured", "unstructured"])
    assert no_none.uniform_params(0.5)["classifier.3:amount"] == 0.0  # without 'none', amount 0 says it
    assert no_none.uniform_schedule(0.5) == dataclasses.replace(schedule, layers=schedule.layers)


def test_uniform_is_capped_by_the_space(cnn_layers: list[ap.LayerInfo]) -> None:
    space = _space(cnn_layers, max_amount=0.6, round_to=[1, 8])
    assert all(p.amount == 0.6 for p in space.uniform_schedule(0.8).layers.values())
    assert space.uniform_params(0.5)["round_to"] == 1 and space.uniform_schedule(0.5).round_to is None


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda p: p.pop("features.0.0:amount"), "'features.0.0:amount' applies"),
        (lambda p: p.update({"shape": "linear"}), "['shape'] do not apply"),
        (lambda p: p.update({"features.0.0:amount": 0.33}), "in steps of 0.05"),
        (lambda p: p.update({"features.0.0:amount": 0.95}), "features.0.0:amount <= 0.9"),
        (lambda p: p.update({"importance": "random"}), "`importance` must be one of ['magnitude', 'lamp']"),
        (lambda p: p.update({"round_to": True}), "round_to"),
        (lambda p: p.update({"steps": 9}), "`1 <= steps <= 3`"),
    ],
)
def test_schedule_from_params_rejects_params_that_do_not_describe_a_run(
    cnn_layers: list[ap.LayerInfo], change: Any, needle: str
) -> None:
    space = _space(cnn_layers, round_to=[1, 8])
    params = space.uniform_params(0.5)
    change(params)
    with pytest.raises(ap.ScheduleError) as info:
        space.schedule_from_params(params)
    assert needle in str(info.value)


def test_params_for_refuses_a_schedule_outside_the_space(cnn_layers: list[ap.LayerInfo]) -> None:
    space = _space(cnn_layers)
    off_grid = Schedule(layers={"features.0.0": ap.LayerPlan("structured", 0.33)}, fine_tune_steps=100)
    with pytest.raises(ap.ScheduleError, match=r"not in this search space: layer 'features.0.0'"):
        space.params_for(off_grid)
    with pytest.raises(ap.ScheduleError, match="importance"):
        space.params_for(Schedule(layers={"features.0.0": ap.LayerPlan("structured", 0.3)}, importance="random"))
    with pytest.raises(ap.ScheduleError, match="not units of this search space"):
        space.params_for({"features.9": 0.5})
    with pytest.raises(ap.ScheduleError, match="unknown option"):
        space.params_for({}, momentum=0.9)


def test_round_to_can_be_searched(digits_task: ap.Task) -> None:
    layers = ap.prunable_layers(digits_task.model, digits_task.example_inputs)
    fixed = dict(methods=["structured"], steps=[1, 1], shapes=["oneshot"], fine_tune_steps=[0],
                 importance=["magnitude"], norms=[1], global_unstructured=[False])  # fmt: skip
    space = SearchSpace(layers, SpaceConfig(**fixed, round_to=[1, 8]))  # type: ignore[arg-type]
    seen = {s.round_to for p, s in _sampled(space, 12) if "round_to" in p}
    assert seen == {None, 8}
    pruned = ap.apply_schedule(
        digits_task.model,
        dataclasses.replace(space.uniform_schedule(0.5), round_to=8),
        example_inputs=digits_task.example_inputs,
    )
    convs = [m.out_channels for m in pruned.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs == [8, 16, 16]  # 16, 32, 32 at 50%, multiples of 8


# ---------------------------------------------------------------------------- sensitivity parametrization
def _synthetic_sensitivity(space: SearchSpace) -> Sensitivity:
    """The first unit is very sensitive, the others cheap; each saves MACs linearly."""
    units = [u.key for u in space.units if u.supports("structured")]
    curves = tuple(
        Curve(
            u, "structured", (0.25, 0.5, 0.75), (90.0, 60.0, 20.0) if i == 0 else (99.9, 99.5, 98.0), (100, 200, 300)
        )  # fmt: skip
        for i, u in enumerate(units)
    )
    return Sensitivity(curves, 100.0, 100.0, 300 * len(units), 0.0, True)


def test_sensitivity_parametrization(cnn_layers: list[ap.LayerInfo]) -> None:
    base = _space(cnn_layers)
    sens = _synthetic_sensitivity(base)
    with pytest.raises(ap.ScheduleError, match="needs a sensitivity scan"):
        _space(cnn_layers, parametrization="sensitivity")
    space = SearchSpace(cnn_layers, SpaceConfig(parametrization="sensitivity"), sensitivity=sens)
    structured_units = [u.key for u in space.units if u.supports("structured")]
    assert space.dimension == 2 + len(structured_units) + 1 + 1 + 1 + 1 + 1  # + ft, steps, shape, importance, norm
    for params, schedule in _sampled(space, 20):
        if params["level"] == 0:
            assert not schedule.layers and "spread" not in params
            continue
        assert {k for k in params if ":" in k} == {f"{u}:offset" for u in structured_units}
        assert params["spread"] in (0.0, 0.25, 0.5, 0.75, 1.0)
        assert all(-0.1 <= params[f"{u}:offset"] <= 0.1 for u in structured_units)
        assert schedule == space.schedule_from_params(params)
        assert {p.method for p in schedule.layers.values()} <= {"structured"}
    # without offsets, spread 1: a 1-D sweep along the sensitivity-greedy path, the sensitive unit last
    sweep = SearchSpace(cnn_layers, SpaceConfig(parametrization="sensitivity", offset_range=0.0), sensitivity=sens)
    first = structured_units[0]
    previous: dict[str, float] = {}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for level in (0.1, 0.3, 0.5, 0.7):
        study.enqueue_trial({"level": level, "spread": 1.0})  # the other parameters are sampled
        schedule = sweep.suggest(study.ask())
        amounts = {n: p.amount for n, p in schedule.layers.items()}
        assert all(amounts.get(u, 0.0) >= previous.get(u, 0.0) for u in structured_units)
        assert amounts.get(first, 0.0) <= min(amounts.get(u, 0.0) for u in structured_units[1:])
        previous = amounts
        # spread 0 at the same level: uniform
        study.enqueue_trial({"level": level, "spread": 0.0})
        uniform = sweep.suggest(study.ask())
        assert {n: p.amount for n, p in uniform.layers.items()} == dict.fromkeys(structured_units, level)
    # uniform amounts are spread 0 with no offsets: the references are points of this space
    params = space.uniform_params(0.4)
    assert params["level"] == 0.4 and params["spread"] == 0.0
    assert all(v == 0.0 for k, v in params.items() if k.endswith(":offset"))
    assert {n: p.amount for n, p in space.schedule_from_params(params).layers.items()} == dict.fromkeys(
        structured_units, 0.4
    )
    # warm-start amounts go through the same params: an allocation of the scan is reproduced
    caps = {u.key: u.max_amount for u in space.units if u.supports("structured")}
    wanted = {u: a for u, a in sens.allocate(0.4, caps=caps).items() if a > 0}
    params = space.params_for(wanted)
    assert space.schedule_from_params(params) == space.suggest(optuna.trial.FixedTrial(params))
    assert {n: p.amount for n, p in space.schedule_from_params(params).layers.items()} == wanted
    assert params["spread"] > 0
    # other amounts: the nearest the space holds (each unit within offset_range of the blend)
    params = space.params_for({u: 0.5 for u in structured_units})
    assert space.schedule_from_params(params) == space.suggest(optuna.trial.FixedTrial(params))
    assert space.params_for({}) == {**space.params_for({}), "level": 0.0}


def test_space_config_fields_and_toml_example_agree() -> None:
    cfg = load_toml(ROOT / "studies" / "digits.toml")
    assert cfg.space == SpaceConfig()  # the example shows every default
    with pytest.raises(ap.ConfigError, match="space.parametrization = 'greedy'; allowed: unit, sensitivity"):
        SearchConfig.from_dict({"space": {"parametrization": "greedy"}})
    with pytest.raises(ap.ConfigError, match="space.offset_range = 1.5"):
        SearchConfig.from_dict({"space": {"offset_range": 1.5}})


def test_distill_is_a_choice_only_when_asked_and_fine_tuned(cnn_layers: list[ap.LayerInfo]) -> None:
    assert all("distill" not in p and not s.distill for p, s in _sampled(_space(cnn_layers), 20))
    space = _space(cnn_layers, distill=[False, True])
    seen = set()
    for params, schedule in _sampled(space, 40, seed=3):
        assert ("distill" in params) == (schedule.fine_tune_steps > 0)
        assert schedule.distill is params.get("distill", False)
        seen.add(schedule.distill)
        assert space.schedule_from_params(params, seed=schedule.seed) == schedule
        assert space.schedule_from_params(space.params_for(schedule), seed=schedule.seed) == schedule
    assert seen == {False, True}
    with pytest.raises(ap.ConfigError, match=r"space.distill = \[\]"):
        SearchConfig.from_dict({"space": {"distill": []}})


def test_a_per_trial_budget_is_split_over_the_steps(cnn_layers: list[ap.LayerInfo]) -> None:
    space = SearchSpace(cnn_layers, SpaceConfig(fine_tune_steps=[90], steps=[1, 3], round_to=None))
    seen = set()
    for _params, schedule in _sampled(space, 30, seed=2):
        assert schedule.fine_tune_steps == 90 // schedule.steps  # 90, 45 or 30: every trial costs 90
        assert space.schedule_from_params(space.params_for(schedule), seed=schedule.seed) == schedule
        seen.add(schedule.steps)
    assert seen == {1, 2, 3}


# ---------------------------------------------------------------------------- neighbours (local search)
def test_neighbour_params_move_only_the_units_named(cnn_layers: list[ap.LayerInfo]) -> None:
    space = _space(cnn_layers, round_to=[1, 8])
    base = space.params_for({"features.0.0": 0.3, "features.3.0": 0.5, "classifier.1": 0.2},
                            steps=2, shape="cubic", importance="lamp", norm=2, round_to=8, fine_tune_steps=50)  # fmt: skip
    schedule = space.schedule_from_params(base)
    assert space.unit_amounts(schedule) == {
        "features.0.0": ("structured", 0.3), "features.3.0": ("structured", 0.5), "classifier.1": ("structured", 0.2)
    }  # fmt: skip
    params = space.neighbour_params(schedule, {"features.0.0": 0.4, "classifier.1": 0.0, "features.1.0": 0.15})
    moved = space.schedule_from_params(params)  # the params are exact: they rebuild the schedule
    assert {k: (p.method, p.amount) for k, p in moved.layers.items()} == {
        "features.0.0": ("structured", 0.4), "features.1.0": ("structured", 0.15), "features.3.0": ("structured", 0.5)
    }  # fmt: skip
    assert params["classifier.1:method"] == "none"  # 0: not pruned
    # every whole-schedule choice is the incumbent's
    for key in ("steps", "shape", "importance", "norm", "round_to", "fine_tune_steps"):
        assert params[key] == base[key], key
    assert (moved.steps, moved.shape, moved.importance, moved.round_to) == (2, "cubic", "lamp", 8)
    # amounts go on the grid and under the unit's cap
    capped = space.schedule_from_params(space.neighbour_params(schedule, {"features.3.0": 0.97}))
    assert capped.layers["features.3.0"].amount == pytest.approx(space.config.max_amount)
    with pytest.raises(ap.ScheduleError, match=r"\['classifier.3'\].*pruned structurally"):
        space.neighbour_params(schedule, {"classifier.3": 0.5})  # the output layer
