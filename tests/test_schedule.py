from __future__ import annotations

import dataclasses
import json
import math

import pytest

import autoprune as ap
from autoprune.schedule import step_amounts
from autoprune.space import uniform_schedule
from autoprune.testing import models as zoo


def _full_schedule() -> ap.Schedule:
    return ap.Schedule(
        layers={
            "features.3.0": ap.LayerPlan("structured", 0.1 + 0.2, norm=2),
            "features.0.0": ap.LayerPlan("unstructured", 0.7),
            "classifier.3": ap.LayerPlan("none", 0.0),
        },
        steps=4,
        shape="cubic",
        fine_tune_steps=25,
        importance="lamp",
        global_unstructured=True,
        round_to=8,
        ignore=("features.1.0", "classifier.1"),
        seed=123,
    )


# ---------------------------------------------------------------------------- step amounts
@pytest.mark.parametrize("shape", ["oneshot", "linear", "cubic"])
def test_one_step_prunes_everything_at_once(shape: str) -> None:
    assert step_amounts(0.6, 1, shape) == [0.6]


def test_linear_steps_grow_evenly() -> None:
    assert step_amounts(0.6, 3, "linear") == pytest.approx([0.2, 0.4, 0.6])


def test_oneshot_with_several_steps_prunes_at_the_last_step() -> None:
    assert step_amounts(0.6, 3, "oneshot") == [0.0, 0.0, 0.6]


@pytest.mark.parametrize("steps", [2, 3, 5, 10])
def test_cubic_follows_zhu_and_gupta(steps: int) -> None:
    s_i, s_f = 0.0, 0.8
    expected = [s_f + (s_i - s_f) * (1 - t / steps) ** 3 for t in range(1, steps + 1)]
    got = step_amounts(s_f, steps, "cubic")
    assert got == pytest.approx(expected, abs=1e-12)
    assert got[-1] == s_f
    # Front-loaded: the increments shrink.
    increments = [b - a for a, b in zip([0.0, *got], got, strict=False)]
    assert all(later < earlier for earlier, later in zip(increments, increments[1:], strict=False))


def test_cubic_three_steps_values() -> None:
    # 1 - (2/3)^3 = 19/27, 1 - (1/3)^3 = 26/27
    assert step_amounts(0.54, 3, "cubic") == pytest.approx([0.54 * 19 / 27, 0.54 * 26 / 27, 0.54])


def test_amounts_at_uses_the_layer_plan() -> None:
    s = ap.Schedule(layers={"a": ap.LayerPlan("structured", 0.5)}, steps=2, shape="linear")
    assert s.amounts_at("a") == [0.25, 0.5]


# ---------------------------------------------------------------------------- JSON
def test_json_round_trip_is_exact() -> None:
    s = _full_schedule()
    text = s.to_json()
    back = ap.Schedule.from_json(text)
    assert back == s
    assert back.to_json() == text
    assert back.layers["features.3.0"].amount == 0.1 + 0.2  # not rounded
    assert json.loads(text)["version"] == 1


def test_json_round_trip_of_default_schedule() -> None:
    s = ap.Schedule()
    assert ap.Schedule.from_json(s.to_json()) == s


def test_equality_does_not_depend_on_order() -> None:
    a = ap.Schedule(layers={"b": ap.LayerPlan(amount=0.1), "a": ap.LayerPlan(amount=0.2)}, ignore=["y", "x"])
    b = ap.Schedule(layers={"a": ap.LayerPlan(amount=0.2), "b": ap.LayerPlan(amount=0.1)}, ignore=("x", "y"))
    assert a == b
    assert a.to_json() == b.to_json()


# ---------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("kwargs", "needles"),
    [
        ({"amount": 1.2}, ["0 <= amount < 1", "amount=1.2"]),
        ({"amount": 1.0}, ["0 <= amount < 1", "amount=1.0"]),
        ({"amount": -0.1}, ["0 <= amount < 1", "-0.1"]),
        ({"amount": math.nan}, ["amount", "nan"]),
        ({"amount": True}, ["amount", "True"]),
        ({"amount": "0.5"}, ["amount", "'0.5'"]),
        ({"method": "bogus"}, ["`method` must be one of", "method='bogus'"]),
        ({"method": "pruned", "amount": 0.5}, ["method", "'pruned'"]),
        ({"norm": 3}, ["norm", "3"]),
        ({"norm": True}, ["norm", "True"]),
    ],
)
def test_layer_plan_is_validated_on_construction(kwargs: dict, needles: list[str]) -> None:
    with pytest.raises(ap.ScheduleError) as info:
        ap.LayerPlan(**kwargs)
    for needle in needles:
        assert needle in str(info.value)
    assert "layer" not in str(info.value)  # no layer to name yet


def test_layer_plan_validate_names_the_layer() -> None:
    plan = ap.LayerPlan("structured", 0.5)
    object.__setattr__(plan, "amount", 1.5)  # bypassing the frozen dataclass
    with pytest.raises(ap.ScheduleError, match=r"amount=1.5 on layer 'features.3'"):
        ap.Schedule(layers={"features.3": plan})


# ---------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("kwargs", "needles"),
    [
        ({"layers": {"conv": {"method": "structured"}}}, ["conv", "LayerPlan", "dict"]),
        ({"layers": [("conv", ap.LayerPlan())]}, ["layers", "list"]),
        ({"steps": 0}, ["1 <= steps <= 100", "steps=0"]),
        ({"steps": 101}, ["steps", "101"]),
        ({"steps": 2.0}, ["steps", "2.0"]),
        ({"steps": True}, ["steps", "True"]),
        ({"shape": "exponential"}, ["shape", "'exponential'"]),
        ({"fine_tune_steps": -1}, ["fine_tune_steps >= 0", "-1"]),
        ({"importance": "taylor"}, ["importance", "'taylor'"]),
        ({"global_unstructured": "yes"}, ["global_unstructured", "'yes'"]),
        ({"round_to": 0}, ["round_to", "0"]),
        ({"seed": "1"}, ["seed", "'1'"]),
        ({"ignore": "features.0"}, ["ignore", "'features.0'"]),
        ({"ignore": ["ok", 3]}, ["ignore", "3"]),
    ],
)
def test_validation_names_rule_layer_and_value(kwargs: dict, needles: list[str]) -> None:
    with pytest.raises(ap.ScheduleError) as info:
        ap.Schedule(**kwargs)
    for needle in needles:
        assert needle in str(info.value)


def test_schedule_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        ap.Schedule(steps=0)


@pytest.mark.parametrize(
    ("data", "needles"),
    [
        ({"steps": 2, "momentum": 0.9}, ["unknown schedule field", "momentum"]),
        ({"layers": {"conv": {"method": "structured", "amount": 0.5, "p": 2}}}, ["unknown field", "'p'", "conv"]),
        ({"layers": {"conv": 0.5}}, ["conv", "0.5"]),
        ({"layers": ["conv"]}, ["layers", "list"]),
        ({"version": 2}, ["version", "2"]),
        ({"layers": {"features.3": {"method": "structured", "amount": 1.2}}}, ["amount", "features.3", "1.2"]),
        ({"layers": {"conv": {"method": "bogus", "amount": 0.5}}}, ["method", "'bogus'", "on layer 'conv'"]),
        ({"layers": {"conv": {"amount": 0.5, "norm": 3}}}, ["norm", "3", "on layer 'conv'"]),
    ],
)
def test_from_json_rejects_bad_data(data: dict, needles: list[str]) -> None:
    with pytest.raises(ap.ScheduleError) as info:
        ap.Schedule.from_json(json.dumps(data))
    for needle in needles:
        assert needle in str(info.value)


def test_from_json_rejects_invalid_json_and_non_objects() -> None:
    with pytest.raises(ap.ScheduleError, match="not valid JSON"):
        ap.Schedule.from_json("{steps: 2")
    with pytest.raises(ap.ScheduleError, match="JSON object"):
        ap.Schedule.from_json("[1, 2]")


# ---------------------------------------------------------------------------- helpers
def test_active_layers_skip_none_zero_and_ignored() -> None:
    s = ap.Schedule(
        layers={
            "a": ap.LayerPlan("structured", 0.5),
            "b": ap.LayerPlan("unstructured", 0.5),
            "c": ap.LayerPlan("none", 0.5),
            "d": ap.LayerPlan("structured", 0.0),
            "e": ap.LayerPlan("structured", 0.3),
        },
        ignore=["e"],
    )
    assert list(s.active_layers()) == ["a", "b"]
    assert list(s.active_layers("unstructured")) == ["b"]


def test_schedules_are_hashable_by_value() -> None:
    a = ap.Schedule(layers={"x": ap.LayerPlan("structured", 0.5)}, steps=2, shape="linear")
    b = ap.Schedule.from_json(a.to_json())
    c = dataclasses.replace(a, steps=3)
    assert a == b and hash(a) == hash(b)
    assert len({a, b, c}) == 2 and {a: 1}[b] == 1


def test_summary() -> None:
    assert ap.Schedule().summary() == "unpruned"
    s = ap.Schedule(
        layers={"a": ap.LayerPlan("structured", 0.4), "b": ap.LayerPlan("structured", 0.6)},
        steps=3,
        shape="cubic",
        fine_tune_steps=10,
    )
    assert s.summary() == "Sx2 mean 50%; 3 steps cubic, ft 10"
    assert dataclasses.replace(s, round_to=8).summary() == "Sx2 mean 50%; 3 steps cubic, ft 10, round 8"
    unstructured = ap.Schedule(layers={"a": ap.LayerPlan("unstructured", 0.5)}, round_to=8)
    assert unstructured.summary() == "Ux1 mean 50%; one-shot"  # rounding only matters for channels


def test_uniform_covers_every_structured_entry_and_caps_at_max_amount() -> None:
    model, x = zoo.get("mobilenetv2", batch_size=1)
    layers = ap.prunable_layers(model, x)
    infos = {i.name: i for i in layers}
    s = ap.Schedule.uniform(layers, amount=0.97, steps=2, shape="linear")
    assert set(s.layers) == {n for n, i in infos.items() if "structured" in i.methods}
    for name, plan in s.layers.items():
        assert plan.method == "structured"
        assert plan.amount == min(0.97, infos[name].max_amount)
    assert s.layers["blocks.0.block.6"].amount == 0.96  # 32 channels: keeps at least one
    assert (s.steps, s.shape) == (2, "linear")
    assert uniform_schedule(model, x, amount=0.97, steps=2, shape="linear") == s


def test_uniform_of_a_model_as_the_readme_calls_it() -> None:
    # The README's hand-made schedule: Schedule.uniform(model, example_inputs, ...) runs the
    # preflight (registered by autoprune.space) and equals the other two spellings.
    model, x = zoo.get("cnn")
    by_model = ap.Schedule.uniform(model, x, amount=0.5, fine_tune_steps=100)
    layers = ap.prunable_layers(model, x)
    assert by_model == ap.Schedule.uniform(layers, amount=0.5, fine_tune_steps=100)
    assert by_model == ap.uniform_schedule(model, x, amount=0.5, fine_tune_steps=100)
    assert set(by_model.layers) == {i.name for i in layers if "structured" in i.methods}
    assert by_model.layers["features.0.0"] == ap.LayerPlan("structured", 0.5)
    assert by_model.fine_tune_steps == 100
    # unstructured: the output layer too (it cannot lose channels, it can lose weights)
    assert "classifier.3" in ap.Schedule.uniform(model, x, method="unstructured", amount=0.5).layers


def test_uniform_of_a_model_without_inputs_or_of_a_bad_value_says_what_to_call() -> None:
    model, x = zoo.get("cnn")
    with pytest.raises(ap.ScheduleError, match=r"needs its example inputs.*Schedule.uniform\(model, example_inputs"):
        ap.Schedule.uniform(model, amount=0.5)
    with pytest.raises(ap.ScheduleError, match=r"but got str; call"):
        ap.Schedule.uniform("model", amount=0.5)
    with pytest.raises(ap.ScheduleError, match=r"but got list and example inputs"):
        ap.Schedule.uniform(ap.prunable_layers(model, x), x, amount=0.5)


def test_schedule_module_does_not_import_the_preflight() -> None:
    import ast
    import inspect

    import autoprune.schedule

    tree = ast.parse(inspect.getsource(autoprune.schedule))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any("preflight" in (m or "") or "executor" in (m or "") for m in imported)


def test_with_fine_tune_keeps_the_pruning() -> None:
    s = _full_schedule()
    cheap = s.with_fine_tune(5)
    assert cheap.fine_tune_steps == 5 and cheap.layers == s.layers and cheap.steps == s.steps
    assert cheap.with_fine_tune(s.fine_tune_steps) == s
    assert s.fine_tune_budget == 4 * 25 and cheap.fine_tune_budget == 4 * 5
    with pytest.raises(ap.ScheduleError, match="fine_tune_steps >= 0"):
        s.with_fine_tune(-1)


def test_distill_round_trips_and_stays_out_of_the_json_when_off() -> None:
    plain = ap.Schedule(layers={"conv": ap.LayerPlan("structured", 0.5)}, fine_tune_steps=10)
    assert "distill" not in plain.to_json()  # older readers see the same JSON as before
    distilled = dataclasses.replace(plain, distill=True)
    assert ap.Schedule.from_json(distilled.to_json()) == distilled != plain
    assert distilled.summary().endswith(", distill")
    with pytest.raises(ap.ScheduleError, match="`distill` must be a bool, but got 'yes'"):
        ap.Schedule(distill="yes")  # type: ignore[arg-type]
